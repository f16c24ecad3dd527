"""End to end: the quickstart recipe, shrunk to tiny-llama and a few steps, through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pmcllama.config import load_config
from pmcllama.run import RecipeConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"

SHRINK = [
    "base_model=tiny-llama",
    "corpus.sources[0].limit=40",
    "instructions.sources[0].limit=40",
    "instructions.sources[0].probe_terms=10",
    "instructions.sources[0].control_terms=10",
    "pretrain.seq_len=64",
    "pretrain.epochs=1",
    "finetune.seq_len=128",
    "finetune.max_steps=3",
    "generate.max_new_tokens=4",
]


def pmcllama(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pmcllama", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    proc = pmcllama("run", str(RECIPE), f"out_dir={out}", *SHRINK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_every_recipe_loads():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        cfg = load_config(RecipeConfig, path)
        assert cfg.name


@pytest.mark.slow
def test_quickstart_writes_every_stage_and_the_table(quickstart_run):
    out, proc = quickstart_run
    for stage in ("corpus", "pretrain", "instructions", "finetune"):
        manifest = json.loads((out / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage
        assert (out / stage / "config.yaml").is_file()
    corpus = json.loads((out / "corpus" / "manifest.json").read_text())
    assert corpus["counts"]["documents_kept"] == 40
    instr = json.loads((out / "instructions" / "manifest.json").read_text())
    assert instr["counts"]["probe"] == 20  # 10 held-out terms x (definition, parent)
    assert instr["counts"]["control"] == 20  # 10 terms of another branch, never trained on
    assert instr["files"]["control"] == "control.jsonl"
    # the finetuned model started from the knowledge-injected one
    ft = json.loads((out / "finetune" / "manifest.json").read_text())
    assert ft["base_model"] == str(out / "pretrain")
    assert ft["counts"]["steps"] == 3

    results = json.loads((out / "results.json").read_text())
    assert list(results["results"]) == ["base", "knowledge-injected", "instruction-tuned"]
    for state, row in results["results"].items():
        for bench in ("kg-probe", "kg-control"):
            probe = row[bench]
            assert probe["n"] == 20
            assert 0.0 <= probe["acc_ci95"][0] <= probe["acc"] <= probe["acc_ci95"][1] <= 1.0
            preds = (out / "eval" / state / "predictions" / f"{bench}.jsonl").read_text().splitlines()
            assert len(preds) == 20
    first = {s: json.loads((out / "eval" / s / "predictions" / "kg-probe.jsonl").read_text().splitlines()[0])
             for s in results["results"]}
    scores = [tuple(first[s]["loglik"]) for s in first]
    assert len(set(scores)) == 3  # three different models were scored
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| quickstart | kg-control acc (95% CI) | kg-control acc_norm (95% CI) "
                       "| kg-probe acc (95% CI) | kg-probe acc_norm (95% CI) |")

    def cell(r, metric):
        lo, hi = r[f"{metric}_ci95"]
        return f"{100 * r[metric]:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"

    assert rows[1:] == [f"| {state} | " + " | ".join(cell(r[b], m) for b in ("kg-control", "kg-probe")
                                                      for m in ("acc", "acc_norm")) + " |"
                        for state, r in results["results"].items()]  # each state's own numbers, in order
    base = results["results"]["base"]["kg-probe"]["baselines"]
    assert (f"kg-probe: n=20, majority class {100 * base['majority']:.1f}, "
            f"best constant choice {100 * base['constant_choice']['max']:.1f}") in table
    assert all(line in proc.stdout for line in rows)  # the run prints the same table
    assert "base" in proc.stdout and "instruction-tuned" in proc.stdout
    assert "[judge] skipped: no judge.base_url" in proc.stdout and not (out / "judge").exists()  # offline
    report = json.loads((out / "report.json").read_text())  # paired tests against the base model
    cmps = report["comparisons"]["kg-probe"]
    assert [c["model"] for c in cmps] == ["run/knowledge-injected", "run/instruction-tuned"]
    assert all(c["n"] == 20 and 0.0 <= c["mcnemar_p"] <= 1.0 for c in cmps)
    assert "McNemar" in proc.stdout and "McNemar" in (out / "report.md").read_text()
    over = report["probe_over_control"]  # probe gain minus control gain, printed too
    assert [d["model"] for d in over] == ["run/knowledge-injected", "run/instruction-tuned"]
    for d, c in zip(over, cmps):
        assert d["first_diff"] == pytest.approx(c["diff"]) and d["n"] == [20, 20]
        assert d["diff"] == pytest.approx(d["first_diff"] - d["second_diff"])
    assert "over its control" in proc.stdout
    for png in ("results.png", "report.png", "loss_curves.png", "pretrain/loss.png", "finetune/loss.png"):
        assert (out / png).stat().st_size > 2000, png
    gens = (out / "generate" / "instruction-tuned" / "generations.jsonl").read_text().splitlines()
    assert [json.loads(g)["prompt"] for g in gens] == ["Hypertension is", "Atrial fibrillation is a kind of"]


@pytest.mark.slow
def test_saved_models_open_with_plain_transformers(quickstart_run):
    out, _ = quickstart_run
    code = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "for d in sys.argv[1:]:\n"
        "    m = AutoModelForCausalLM.from_pretrained(d); t = AutoTokenizer.from_pretrained(d)\n"
        "    assert t.chat_template and m.config.vocab_size == len(t), d\n"
        "print('ok')\n"
    )
    # a fresh interpreter that never imports pmcllama
    proc = subprocess.run([sys.executable, "-c", code, str(out / "pretrain"), str(out / "finetune")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.slow
def test_rerun_is_a_no_op(quickstart_run):
    out, _ = quickstart_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}
    proc = pmcllama("run", str(RECIPE), f"out_dir={out}", *SHRINK)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("is up to date") >= 4
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}
