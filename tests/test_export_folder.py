"""`pmcllama export MODEL --out FOLDER`: a Hugging Face folder with a model card from the manifests;
a LoRA adapter alone refused; the recipe's `export:` section."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_export import TEXT, _llama_cpp_greedy, assert_one_line_error, cli, fields
from test_quickstart import SHRINK as QUICKSTART_SHRINK

ROOT = Path(__file__).resolve().parents[1]


def _logits(folder_or_name, ids):
    import torch
    from transformers import AutoModelForCausalLM

    from pmcllama.models import resolve

    model = AutoModelForCausalLM.from_pretrained(str(resolve(folder_or_name))).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.slow
def test_folder_export_is_sharded_and_gives_identical_logits(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from pmcllama.models import load_tokenizer

    out = tmp_path / "hf"
    res = cli("tiny-llama", "--out", str(out), "max_shard_size=200KB", "name=cardio-tiny")
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) == 3 and sorted(set(index["weight_map"].values())) == shards
    assert len(index["weight_map"]) == 2 + 2 * 9  # tied head: no lm_head.weight
    assert {"config.json", "tokenizer.json", "README.md", "manifest.json"} <= {p.name for p in out.iterdir()}
    tok = load_tokenizer("tiny-llama")
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    assert AutoTokenizer.from_pretrained(str(out))(TEXT)["input_ids"] == ids[0].tolist()
    assert torch.equal(_logits(out, ids), _logits("tiny-llama", ids))
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "base_model: tiny-llama" in front and "- medical" in front
    assert "license: other" in front and "tiny-llama (licence: unknown — check)" in card
    assert "Not for medical use" in card and "No pmcllama stage manifest" in card and "\n# cardio-tiny\n" in card
    again = cli("tiny-llama", "--out", str(out), "max_shard_size=200KB", "name=cardio-tiny")
    assert again.returncode == 0 and "up to date" in again.stdout


@pytest.mark.slow
def test_folder_export_keeps_the_users_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert_one_line_error(cli("tiny-llama", "--out", str(mine)), "did not write", "--force")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert cli("tiny-llama", "--out", str(mine), "--force").returncode == 0
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / "config.json").is_file()
    readme = tmp_path / "readme"
    readme.mkdir()
    (readme / "README.md").write_text("my card")
    assert_one_line_error(cli("tiny-llama", "--out", str(readme), "--force"), "README.md", "did not write")
    assert (readme / "README.md").read_text() == "my card" and [p.name for p in readme.iterdir()] == ["README.md"]
    assert_one_line_error(cli("tiny-llama", "--out", str(tmp_path / "x"), "max_shard_size=lots"), "max_shard_size")
    assert_one_line_error(cli("tiny-llama", "--out", str(tmp_path / "x"), "dtype=f16"), "dtype= is for .gguf")
    assert not (tmp_path / "x").exists()


# the quickstart shrunk as tests/test_quickstart.py shrinks it, fine-tuned with LoRA, no completions
SHRINK = [*QUICKSTART_SHRINK, "finetune.lora={rank: 4, alpha: 8}", "generate.prompts=[]"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """The quickstart recipe shrunk to tiny-llama, LoRA fine-tuning, with its export section."""
    out = tmp_path_factory.mktemp("run") / "qs"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pmcllama", "run", str(ROOT / "recipes" / "quickstart.yaml"),
                           f"out_dir={out}", *SHRINK], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_recipe_exports_q8_0_and_a_card_read_from_the_manifests(lora_run):
    kv, tensors = fields(lora_run / "model-q8_0.gguf")
    assert kv["general.file_type"] == 7 and tensors["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0"
    card = (lora_run / "card" / "README.md").read_text()
    assert kv["general.name"] == f"{lora_run.name}-finetune" and f"\n# {lora_run.name}-finetune\n" in card
    manifest = {s: json.loads((lora_run / s / "manifest.json").read_text())
                for s in ("corpus", "pretrain", "instructions", "finetune")}
    corpus = manifest["corpus"]["sources"]["hpo_cardiovascular"]
    assert f"| hpo_cardiovascular | {corpus['documents']} | {corpus['tokens']} | 1.0 | https://hpo.jax.org/app/license" in card
    for stage in ("pretrain", "finetune"):
        c = manifest[stage]["counts"]
        assert f"trained: {c['steps']} steps, {c['tokens']} tokens" in card
    assert f"wall time {manifest['finetune']['timings']['wall_s']} s" in card and "hardware: device cpu" in card
    assert '- LoRA: {"rank": 4, "alpha": 8' in card
    stats = json.loads((lora_run / "instructions" / "stats.json").read_text())["sources"]["hpo_kg"]
    assert f"| hpo_kg | kg | {stats['train']} | {stats['val']} | description {stats['tasks']['description']}" in card
    assert (lora_run / "results.md").read_text().strip() in card and "Paired comparison" in card
    assert "kg-probe: medqa-text-cloze-v1" in card and "- finetune: template chat" in card
    order = [card.index(f"### {s} ") for s in ("corpus", "pretrain", "instructions", "finetune")]
    assert order == sorted(order) and "base_model: tiny-llama" in card


@pytest.mark.slow
def test_a_lora_adapter_alone_is_refused_and_the_merged_model_exports(lora_run, tmp_path):
    adapter = lora_run / "finetune" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    line = assert_one_line_error(cli(str(adapter), "--out", str(tmp_path / "a.gguf")), "LoRA adapter")
    assert f"pmcllama export {lora_run / 'finetune'} --out" in line
    assert_one_line_error(cli(str(adapter), "--out", str(tmp_path / "a")), "LoRA adapter")
    assert list(tmp_path.iterdir()) == []
    pytest.importorskip("xllamacpp")
    from test_export import _hf_greedy

    res = cli(str(lora_run / "finetune"), "--out", str(tmp_path / "m.gguf"))
    assert res.returncode == 0, res.stderr
    assert _llama_cpp_greedy(tmp_path / "m.gguf", 12) == _hf_greedy(str(lora_run / "finetune"), 12)


@pytest.mark.slow
def test_the_card_follows_a_run_folder_read_from_another_working_folder(lora_run, tmp_path, monkeypatch):
    """Links recorded relative to the working folder of the run (runs/quickstart/pretrain) are
    found as siblings when the run is read from elsewhere."""
    from pmcllama.card import lineage

    (tmp_path / "elsewhere").mkdir()  # not the checkout, where `make quickstart` may have left runs/quickstart
    monkeypatch.chdir(tmp_path / "elsewhere")

    for stage in ("corpus", "pretrain", "instructions", "finetune"):
        m = json.loads((lora_run / stage / "manifest.json").read_text())
        for key in ("data", "model"):
            if str(m["config"].get(key, "")).startswith(str(lora_run)):
                m["config"][key] = "runs/quickstart/" + Path(m["config"][key]).name
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "manifest.json").write_text(json.dumps(m))
    chain, base = lineage(tmp_path / "finetune")
    assert [(f.name, m["stage"]) for f, m in chain] == [("finetune", "finetune"), ("instructions", "instructions"),
                                                        ("pretrain", "pretrain"), ("corpus", "corpus")]
    assert base == "tiny-llama"
