"""`pmcllama report` (models x benchmarks, paired tests) and evaluate's calibration, subjects, plots."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pmcllama.config import build_config
from pmcllama.errors import ConfigError, UserError
from pmcllama.evaluate import EvaluateConfig, run
from pmcllama.report import discover, make_report

A = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
B = [1, 1, 1, 1, 0, 1, 1, 1, 1, 1]  # only A right: 1 item; only B right: 5 items


def fake_eval(folder, model, benches: dict[str, tuple[list[int], list[float]]]):
    """An evaluate output written by hand: results.json + predictions/<bench>.jsonl."""
    (folder / "predictions").mkdir(parents=True)
    results = {"model": model}
    for name, (correct, ci) in benches.items():
        n = len(correct)
        results[name] = {"n": n, "acc": sum(correct) / n, "acc_ci95": ci, "acc_norm": 0.5,
                         "acc_norm_ci95": [0.3, 0.7], "prompt_template": "t-v1"}
        rows = [{"id": f"q{k}", "gold": 0, "pred": 0 if c else 1, "correct": bool(c),
                 "correct_norm": k % 2 == 0, "loglik": [-1.0, -2.0]} for k, c in enumerate(correct)]
        (folder / "predictions" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def pmcllama(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pmcllama", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_report_cli_table_and_paired_numbers(tmp_path):
    first = fake_eval(tmp_path / "base", "m-base", {"bq": (A, [0.2, 0.8]), "other": ([1, 0], [0.0, 1.0])})
    second = fake_eval(tmp_path / "tuned", "m-tuned", {"bq": (B, [0.7, 1.0])})
    out = tmp_path / "rep"
    proc = pmcllama("report", first, second, "--out", out, "--bootstrap", 300)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert md in proc.stdout
    assert "| model | bq | other |" in md
    assert "| base | 50.0 (20.0-80.0) | 50.0 (0.0-100.0) |" in md
    assert "| tuned | 90.0 (70.0-100.0) | - |" in md
    assert "| bq | tuned | 10 | +40.0 | " in md and " | 1 | 5 | 0.219 |" in md
    rep = json.loads((out / "report.json").read_text())
    cmp = rep["comparisons"]["bq"][0]
    assert cmp["model"] == "tuned" and cmp["against"] == "base" and cmp["n"] == 10
    assert cmp["diff"] == pytest.approx(0.4) and cmp["mcnemar_p"] == pytest.approx(7 / 32)
    assert cmp["diff_ci95"][0] <= 0.4 <= cmp["diff_ci95"][1]
    assert "other" not in rep["comparisons"]  # the second model did not score it
    assert [m["model"] for m in rep["models"]] == ["m-base", "m-tuned"]
    assert (out / "report.png").stat().st_size > 1000
    norm = make_report([first, second], tmp_path / "rep2", metric="acc_norm", n_boot=100)
    assert "acc_norm in %" in norm and "| base | 50.0 (30.0-70.0) |" in norm
    assert "| bq | tuned | 10 | +0.0 | " in norm and "| 0 | 0 | 1 |" in norm


def test_report_reads_recipe_run_folders(tmp_path):
    run_dir = tmp_path / "quick"
    fake_eval(run_dir / "eval" / "zeta", "z", {"bq": (A, [0.2, 0.8])})
    fake_eval(run_dir / "eval" / "alpha", "a", {"bq": (B, [0.7, 1.0])})
    (run_dir / "results.json").write_text(json.dumps({"states": {"zeta": "z", "alpha": "a"}}))
    runs = discover([run_dir])
    assert [r.label for r in runs] == ["quick/zeta", "quick/alpha"]
    text = make_report([run_dir], tmp_path / "r", n_boot=50)
    assert "Paired comparison against quick/zeta" in text and "| bq | quick/alpha | 10 | +40.0 |" in text
    assert "not comparable" not in text
    res = run_dir / "eval" / "alpha" / "results.json"
    data = json.loads(res.read_text())
    data["bq"]["prompt_template"] = "t-v2"
    res.write_text(json.dumps(data))
    assert "bq was scored with different prompt templates (t-v1, t-v2)" in make_report([run_dir], tmp_path / "r", n_boot=50)


def test_report_errors(tmp_path):
    proc = pmcllama("report", tmp_path / "missing", "--out", tmp_path / "r")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "missing" in proc.stderr and "not found" in proc.stderr
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    proc = pmcllama("report", junk, "--out", tmp_path / "r")
    assert proc.returncode == 2 and "neither an evaluate output" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    first = fake_eval(tmp_path / "a", "a", {"bq": (A, [0.2, 0.8])})
    short = fake_eval(tmp_path / "b", "b", {"bq": (B[:8], [0.7, 1.0])})
    with pytest.raises(UserError, match="different items"):
        make_report([first, short], tmp_path / "r", n_boot=10)
    with pytest.raises(UserError, match="metric"):
        make_report([first], tmp_path / "r", metric="f1")


MEDMCQA = [{"id": f"m{i}", "question": f"Which nerve {i}?", "opa": "Facial", "opb": "Vagus", "opc": "Optic",
            "opd": "Trigeminal", "cop": 1 + i % 4, "subject_name": ["Anatomy", "Physiology"][i % 2]}
           for i in range(6)]
MCQ = [{"question": f"Q{i}?", "options": ["yes", "no", "maybe"], "answer": i % 3} for i in range(4)]


def test_evaluate_new_formats_calibration_subjects_and_report(tmp_path):
    med = tmp_path / "dev_sample.jsonl"
    med.write_text("".join(json.dumps(r) + "\n" for r in MEDMCQA))
    mm = tmp_path / "anatomy_test.csv"
    mm.write_text("".join(f"Question {i}?,a,b,c,d,{'ABCD'[i % 4]}\n" for i in range(5)))
    mc = tmp_path / "set.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in MCQ))
    out = tmp_path / "eval"
    cfg = build_config(EvaluateConfig, {"model": "tiny-llama", "out": str(out), "bootstrap": 100, "benchmarks": [
        {"name": "medmcqa", "format": "medmcqa", "path": str(med)},
        {"name": "mmlu", "format": "mmlu", "path": str(mm)},
        {"name": "mcq", "format": "mcq", "path": str(mc), "choices": "text"},
    ]})
    run(cfg)
    results = json.loads((out / "results.json").read_text())
    assert {k: results[k]["n"] for k in ("medmcqa", "mmlu", "mcq")} == {"medmcqa": 6, "mmlu": 5, "mcq": 4}
    assert results["medmcqa"]["prompt_template"] == "medmcqa-lmeval-v1"
    assert results["medmcqa"]["choices_mode"] == "letters" and results["mcq"]["choices_mode"] == "text"
    assert set(results["medmcqa"]["subjects"]) == {"Anatomy", "Physiology"}
    assert results["medmcqa"]["subjects"]["Anatomy"]["n"] == 3
    assert list(results["mmlu"]["subjects"]) == ["anatomy"] and "subjects" not in results["mcq"]
    for name in ("medmcqa", "mmlu", "mcq"):
        cal = results[name]["calibration"]
        assert 0 <= cal["ece"] <= 1 and sum(b["n"] for b in cal["bins"]) == results[name]["n"]
        assert (out / "plots" / f"{name}_reliability.png").stat().st_size > 1000
    preds = [json.loads(x) for x in (out / "predictions" / "medmcqa.jsonl").read_text().splitlines()]
    assert preds[0]["subject"] == "Anatomy" and "ECE" in (out / "results.md").read_text()
    shutil.copytree(out, tmp_path / "eval2")
    text = make_report([out, tmp_path / "eval2"], tmp_path / "rep", n_boot=50)
    assert "| medmcqa | eval2 | 6 | +0.0 | +0.0 to +0.0 | 0 | 0 | 1 |" in text
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["models"][0]["results"]["mmlu"]["ece"] == results["mmlu"]["calibration"]["ece"]


def test_config_rejects_misplaced_options():
    with pytest.raises(ConfigError, match="mmlu only"):
        build_config(EvaluateConfig, {"model": "m", "benchmarks": [
            {"name": "a", "format": "medmcqa", "path": "p", "subject": "anatomy"}]})
    with pytest.raises(ConfigError, match="mcq or medqa only"):
        build_config(EvaluateConfig, {"model": "m", "benchmarks": [
            {"name": "a", "format": "mmlu", "path": "p", "choices": "text"}]})
