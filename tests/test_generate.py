"""Completion of prompts from arguments and files, greedy and sampled, streamed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pmcllama.errors import UserError
from pmcllama.generate import GenerateConfig, complete, read_prompts


def test_prompt_sources_and_errors(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("Asthma is\n\nThe aorta\n")
    assert read_prompts(GenerateConfig(prompts=["X"], prompts_file=str(txt))) == ["X", "Asthma is", "The aorta"]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(UserError, match=r"p.jsonl:2: record has no string 'prompt'"):
        read_prompts(GenerateConfig(prompts_file=str(bad)))
    with pytest.raises(UserError, match="no prompts"):
        read_prompts(GenerateConfig())


def test_greedy_is_deterministic_and_sampling_follows_the_seed(tiny_model):
    model, tok = tiny_model
    greedy = GenerateConfig(max_new_tokens=6, stream=False)
    a = complete(model, tok, ["Heart"], greedy)[0]
    b = complete(model, tok, ["Heart"], greedy)[0]
    assert a == b and a["new_tokens"] == 6
    s = GenerateConfig(max_new_tokens=6, stream=False, temperature=1.0, seed=1)
    assert complete(model, tok, ["Heart"], s) == complete(model, tok, ["Heart"], s)


def test_cli_streams_and_writes_generations(tmp_path):
    out = tmp_path / "gen"
    p = subprocess.run([sys.executable, "-m", "pmcllama", "generate", "model=tiny-llama", "max_new_tokens=5",
                        f"out={out}", "Cardiomyopathy is"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert ">>> Cardiomyopathy is" in p.stdout
    rows = [json.loads(l) for l in (out / "generations.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"] == "Cardiomyopathy is" and rows[0]["new_tokens"] == 5
    assert rows[0]["completion"] in p.stdout
