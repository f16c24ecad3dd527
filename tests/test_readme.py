"""README true: every command in README.md's fenced ```bash blocks runs and writes what the README
says it writes, on `tiny-llama` and small inputs this test puts where the commands look for them.

What the test changes in a command is listed in SUBSTITUTIONS; the commands it does not run are
listed, each with the reason, in SKIPPED. A README command that is neither run nor listed fails
the fast test below, so a new command cannot go untested by accident.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# README command (its start) -> why this test does not run it.
SKIPPED = {
    "make quickstart": "builds .venv and runs the whole recipe on SmolLM2-135M (10-15 min); "
                       "tests/test_quickstart.py runs the same recipe through `pmcllama run`, shrunk to tiny-llama",
    "make test": "runs this test suite, which would run itself",
    "head=$(scontrol show hostnames": "Slurm batch script: needs scontrol inside a Slurm allocation",
    "srun torchrun": "Slurm batch script: 4 nodes x 8 GPUs and a 13B model; training under torchrun is "
                     "tested by tests/test_distributed.py",
    "pmcllama serve runs/quickstart/finetune": "a server that runs until stopped: tests/test_serve.py starts the same command "
                      "(tiny-llama, port=0) and talks to it with the openai client, httpx and a browser",
    "pmcllama serve smollm2-135m port=8001": "the judge server of the Judge section, running until stopped: "
                                             "tests/test_judge.py starts `pmcllama serve tiny-llama` as a judge",
    "pmcllama judge runs/quickstart": "needs a running judge server and the quickstart's completions: "
                                      "tests/test_judge.py runs the same command against a live `pmcllama serve`",
    "pmcllama run recipes/quickstart.yaml judge.base_url": "the whole quickstart recipe with a judge server: "
                                                           "tests/test_judge.py runs the recipe's judge step",
    "pmcllama export runs/quickstart/finetune": "reads runs/quickstart from `make quickstart`; "
                                                "tests/test_export_folder.py exports a shrunk quickstart run's model "
                                                "and checks its card against the run's manifests",
    "curl -s http://127.0.0.1:8000": "talks to the server above; tests/test_serve.py posts the same kind of "
                                     "body to a live server with httpx",
}

# What the test changes in the commands it runs, and why (applied in `substitute`).
SUBSTITUTIONS = {
    "smollm2-135m -> tiny-llama": "the random built-in test model trains in seconds (the README's own advice)",
    "model=tiny-llama added to pretrain/finetune without model=": "their default model is smollm2-135m",
    "max_steps=2 added to pretrain/finetune": "an epoch of the examples' data is minutes of training even for "
                                              "tiny-llama; max_steps overrides epochs",
    "corpus source `paths: [hpo]` gets `limit: 300`": "the whole HPO is 16k terms, 3.4M tiny-llama tokens",
    "instructions `limit: 2000` -> `limit: 100`": "fewer KG prompts, same code path",
}

# Folders a README command reads that no earlier README command writes: the README's comment says
# how to make them, and the test makes them so: (verb of the README command to rerun, overrides).
PREREQUISITES = {
    "runs/eval_base": ("evaluate", {"model": "tiny-llama", "out": "runs/eval_base"}),
    "runs/finetune_base": ("finetune", {"model": "tiny-llama", "out": "runs/finetune_base"}),
}

# Files in the README's "writes" column that the example commands do not ask for.
CONDITIONAL = {
    ("corpus", "decontamination.jsonl"): "written only with benchmark files to decontaminate against",
    ("instructions", "decontamination.jsonl"): "written only with benchmark files to decontaminate against",
    ("instructions", "probe.jsonl"): "written only for a kg source with probe_terms",
    ("instructions", "control.jsonl"): "written only for a kg source with control_root and control_terms",
    ("instructions", "rejected.jsonl"): "written only when on_error: skip set records aside",
    ("generate", "generations.jsonl"): "written only with out=",
}

HF_FOLDER = ("config.json", "model.safetensors", "manifest.json", "config.yaml")


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each command in the ```bash blocks; continuations joined,
    comment lines dropped (shlex drops trailing comments)."""
    out, block, pending = [], False, None
    for no, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        if pending is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            pending = (no, line.strip())
        else:
            pending = (pending[0], pending[1][:-1].rstrip() + " " + line.strip())
        if not pending[1].endswith("\\"):
            out.append(pending)
            pending = None
    assert pending is None, f"README.md:{pending[0]}: the command's last line ends with a backslash"
    return out


def skip_reason(command: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if command.startswith(start)), None)


def documented_outputs(text: str) -> dict[str, list[str]]:
    """command -> file names in its "writes" cell of the README's table of stages."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\| `pmcllama (\w+)` \|.*\| ([^|]*) \|$", line)
        if not m:
            continue
        names = [n for n in re.findall(r"`([^`]+)`", m.group(2)) if re.search(r"\.\w+$|/$", n)]
        if "HF model folder" in m.group(2):
            names += HF_FOLDER
        out[m.group(1)] = names
    return out


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    text = README.read_text(encoding="utf-8")
    commands = readme_commands(text)
    for start in SKIPPED:
        found = [c for _, c in commands if c.startswith(start)]
        assert len(found) == 1, f"SKIPPED names {start!r}, which is {len(found)} README commands, not 1"
    run = [(no, c) for no, c in commands if skip_reason(c) is None]
    assert run, "no README command to run"
    for no, c in run:
        assert c.startswith("pmcllama "), f"README.md:{no}: {c!r} is neither a pmcllama command nor in SKIPPED"
        shlex.split(c, comments=True)  # valid shell words
    writes = documented_outputs(text)
    for no, c in run:
        verb = shlex.split(c)[1]
        assert verb in writes, f"README.md:{no}: `pmcllama {verb}` has no row in the table of stages"
    assert set(writes) >= {"corpus", "pretrain", "instructions", "finetune", "evaluate", "generate", "report"}
    assert {"<source>/tokens.bin", "corpus_report.json"} <= set(writes["corpus"])
    assert {"model.safetensors", "metrics.jsonl", "adapter/"} <= set(writes["finetune"])
    assert {"results.json", "predictions/<benchmark>.jsonl"} <= set(writes["evaluate"])
    for verb, name in CONDITIONAL:
        assert name in writes[verb], f"CONDITIONAL names {name}, which the README's `pmcllama {verb}` row lacks"
    for folder, (verb, overrides) in PREREQUISITES.items():  # the README says how to make it
        said = [line for line in text.splitlines() if folder in line and "out=" + folder in line]
        assert said, f"README.md does not say how {folder} is made (`pmcllama {verb}` with out={folder})"


# ---- inputs: the file names the README's examples use, written small (real samples when present) ----

_ORGANS = "heart aorta kidney liver lung pancreas thyroid spleen stomach brain".split()
_FACTS = ["is supplied by", "is drained by", "is examined with", "is affected by", "is regulated by"]
_THINGS = "the coronary arteries|a portal vein|an ultrasound scan|chronic inflammation|the vagus nerve|" \
          "insulin and glucagon|the sympathetic system|a biopsy".split("|")


def _sentences(rng, n: int) -> str:
    return " ".join(f"The {rng.choice(_ORGANS)} {rng.choice(_FACTS)} {rng.choice(_THINGS)}." for _ in range(n))


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_inputs(folder: Path) -> str:
    """textbook.jsonl, chatdoctor5k.json, ori_pqal.json, test_ground_truth.json, test.jsonl in
    `folder`: the first records of the real files in ../shared/data when it is there, else
    records written here. Returns which."""
    rng = np.random.default_rng(0)
    shared = SHARED_DATA.is_dir()
    if shared:
        book = (SHARED_DATA / "corpus/textbook/anatomy_physiology_2e_sections.jsonl").read_text(encoding="utf-8")
        (folder / "textbook.jsonl").write_text("".join(book.splitlines(keepends=True)[1:11]), encoding="utf-8")
        chat = json.loads((SHARED_DATA / "instruct/chatdoctor5k.json").read_text(encoding="utf-8"))[:40]
        pqa = json.loads((SHARED_DATA / "benchmarks/pubmedqa/ori_pqal_trainval.json").read_text(encoding="utf-8"))
        pqa = dict(list(pqa.items())[:30])
        medqa = (SHARED_DATA / "benchmarks/format_samples/medqa_us_4options_sample.jsonl").read_text(encoding="utf-8")
        (folder / "test.jsonl").write_text(medqa, encoding="utf-8")
    else:
        _jsonl(folder / "textbook.jsonl", [{"text": f"Section {i}. " + _sentences(rng, 60)} for i in range(40)])
        chat = [{"instruction": "If you are a doctor, please answer the medical questions based on the "
                                "patient's description.",
                 "input": f"Doctor, my {rng.choice(_ORGANS)} hurts since {i} days. What should I do?",
                 "output": _sentences(rng, 4)} for i in range(40)]
        pqa = {str(10000 + i): {"QUESTION": f"Is the {rng.choice(_ORGANS)} affected in case {i}?",
                                "CONTEXTS": [_sentences(rng, 3), _sentences(rng, 2)],
                                "final_decision": ["yes", "no", "maybe"][i % 3]} for i in range(30)}
        _jsonl(folder / "test.jsonl", [{"question": f"Which organ is described in case {i}? " + _sentences(rng, 2),
                                        "answer_idx": "ABCD"[i % 4],
                                        "options": dict(zip("ABCD", rng.choice(_ORGANS, 4, replace=False)))}
                                       for i in range(10)])
    (folder / "chatdoctor5k.json").write_text(json.dumps(chat), encoding="utf-8")
    (folder / "ori_pqal.json").write_text(json.dumps(pqa), encoding="utf-8")
    ids = {k: v["final_decision"] for k, v in list(pqa.items())[::2]}  # the test set: every other question
    (folder / "test_ground_truth.json").write_text(json.dumps(ids), encoding="utf-8")
    return "../shared/data samples" if shared else "written here"


# ---- running the commands ----

def substitute(words: list[str]) -> list[str]:
    """The command with SUBSTITUTIONS applied."""
    words = [w.replace("smollm2-135m", "tiny-llama") for w in words]
    if words[1] in ("pretrain", "finetune"):
        if not any(w.startswith("model=") for w in words):
            words.append("model=tiny-llama")
        words.append("max_steps=2")
    if words[1] == "corpus":
        words = [w.replace("paths: [hpo]", "paths: [hpo], limit: 300") if w.startswith("sources=") else w
                 for w in words]
    if words[1] == "instructions":
        words = [w.replace("limit: 2000", "limit: 100") if w.startswith("sources=") else w for w in words]
    return words


def with_overrides(words: list[str], overrides: dict[str, str]) -> list[str]:
    kept = [w for w in words if w.split("=", 1)[0] not in overrides]
    return kept + [f"{k}={v}" for k, v in overrides.items()]


def out_path(words: list[str]) -> str | None:
    for i, w in enumerate(words):
        if w.startswith("out="):
            return w[4:]
        if w == "--out":
            return words[i + 1]
    return None


def expected_files(verb: str, writes: dict[str, list[str]]) -> list[str]:
    """The files the README's table says `verb` writes, as globs under its out folder."""
    return [re.sub(r"<[a-z]+>", "*", name) for name in writes[verb] if (verb, name) not in CONDITIONAL]


def check_outputs(cwd: Path, verb: str, words: list[str], writes) -> list[str]:
    """What is missing of what the README says the command writes."""
    out = out_path(words)
    if verb == "export" and not out.endswith(".gguf"):  # a Hugging Face folder: the files the table names
        return [f"{out}/{n}" for n in expected_files(verb, writes) if n != ".gguf" and not list((cwd / out).glob(n))]
    if verb in ("plot", "export"):  # "a PNG", "the --out file": the --out file itself
        file = cwd / out
        return [] if file.is_file() and file.stat().st_size > 1000 else [out]
    if verb == "generate":  # no out=: the completions are printed, one ">>> prompt" per prompt
        return []
    assert out, f"no out= or --out in {' '.join(words)}"
    missing = []
    for pattern in expected_files(verb, writes):
        hits = list((cwd / out).glob(pattern.rstrip("/")))
        if not hits or (pattern.endswith("/") and not all(h.is_dir() for h in hits)):
            missing.append(f"{out}/{pattern}")
    return missing


@pytest.mark.slow
def test_readme_commands_run_and_write_what_they_say(tmp_path):
    text = README.read_text(encoding="utf-8")
    writes = documented_outputs(text)
    inputs = write_inputs(tmp_path)
    failures, ran = [], {}

    def pmcllama(words):
        return subprocess.run([sys.executable, "-m", "pmcllama", *words[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=1200)

    for no, command in readme_commands(text):
        if skip_reason(command):
            continue
        words = substitute(shlex.split(command, comments=True))
        for folder, (verb, overrides) in PREREQUISITES.items():
            if folder in words and not (tmp_path / folder).exists():
                assert verb in ran, f"README.md:{no} reads {folder}, made from a `pmcllama {verb}` not run before it"
                made = pmcllama(with_overrides(ran[verb], overrides))
                assert made.returncode == 0, f"making {folder} for README.md:{no}: {made.stderr[-2000:]}"
        t0 = time.perf_counter()
        proc = pmcllama(words)
        print(f"README.md:{no}: pmcllama {words[1]}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s")
        ran.setdefault(words[1], words)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            failures.append(f"README.md:{no}: exit {proc.returncode}: {last}\n    {' '.join(words)}")
            continue
        verb = words[1]
        missing = check_outputs(tmp_path, verb, words, writes)
        if missing:
            failures.append(f"README.md:{no}: `pmcllama {verb}` did not write {', '.join(missing)}")
        if verb == "generate":
            prompts = [w for w in words[2:] if "=" not in w]
            assert prompts and all(f">>> {p}" in proc.stdout for p in prompts), proc.stdout[-2000:]
    assert not failures, f"README commands that fail (inputs: {inputs}):\n" + "\n".join(failures)
