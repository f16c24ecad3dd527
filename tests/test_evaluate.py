"""STAGE 4 evaluate: config, stage outputs, rerun no-op, CLI errors, real benchmark files."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pmcllama.config import build_config
from pmcllama.errors import ConfigError, UserError
from pmcllama.evaluate import EvaluateConfig, format_table, run

PQA = {str(1000 + i): {"QUESTION": f"Is finding {i} relevant?", "CONTEXTS": [f"Context {i}.", "More."],
                       "final_decision": ["yes", "no", "maybe", "yes"][i % 4]} for i in range(6)}
MQ = [{"question": f"Question {i}?", "answer_idx": "ABCD"[i % 4],
       "options": {"A": "Alpha", "B": "Beta", "C": "Gamma", "D": "Delta"}} for i in range(5)]


@pytest.fixture()
def bench_files(tmp_path):
    pqa = tmp_path / "ori_pqal.json"
    pqa.write_text(json.dumps(PQA), encoding="utf-8")
    mq = tmp_path / "medqa.jsonl"
    mq.write_text("".join(json.dumps(r) + "\n" for r in MQ), encoding="utf-8")
    return pqa, mq


def make_cfg(out, pqa, mq, **extra) -> EvaluateConfig:
    return build_config(EvaluateConfig, {
        "model": "tiny-llama", "out": str(out), "bootstrap": 200,
        "benchmarks": [
            {"name": "pqa", "format": "pubmedqa", "path": str(pqa)},
            {"name": "mq", "format": "medqa", "path": str(mq)},
            {"name": "mq_text", "format": "medqa", "path": str(mq), "choices": "text", "limit": 3},
        ],
        **extra,
    })


def test_config_validation():
    with pytest.raises(UserError, match="no benchmarks to score"):  # a config may hold none (a recipe's
        run(build_config(EvaluateConfig, {"model": "m", "benchmarks": []}))  # evaluate adds its probe); a run not
    with pytest.raises(ConfigError, match="medqa only"):
        build_config(EvaluateConfig, {"model": "m", "benchmarks": [
            {"name": "a", "format": "pubmedqa", "path": "p", "choices": "text"}]})
    with pytest.raises(ConfigError, match="unique"):
        build_config(EvaluateConfig, {"model": "m", "benchmarks": [
            {"name": "a", "format": "medqa", "path": "p"}, {"name": "a", "format": "medqa", "path": "q"}]})
    with pytest.raises(ConfigError, match="did you mean"):
        build_config(EvaluateConfig, {"model": "m", "benchmarks": [
            {"name": "a", "format": "medqa", "paht": "p"}]})


def test_stage_writes_results_and_rerun_is_noop(tmp_path, bench_files, capsys):
    out = tmp_path / "eval"
    cfg = make_cfg(out, *bench_files)
    assert run(cfg) == out
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "tiny-llama"
    assert {k: results[k]["n"] for k in ("pqa", "mq", "mq_text")} == {"pqa": 6, "mq": 5, "mq_text": 3}
    pqa = results["pqa"]
    assert pqa["prompt_template"] == "pubmedqa-lmeval-v1" and pqa["format"] == "pubmedqa"
    assert pqa["baselines"]["majority"] == pytest.approx(3 / 6) and pqa["baselines"]["majority_choice"] == "yes"
    assert pqa["acc_ci95"][0] <= pqa["acc"] <= pqa["acc_ci95"][1] and pqa["truncated"] == 0
    assert results["mq"]["choices_mode"] == "letters" and results["mq_text"]["choices_mode"] == "text"
    assert results["mq"]["baselines"]["constant_choice"]["per_choice"] == [0.4, 0.2, 0.2, 0.2]
    for name, n in (("pqa", 6), ("mq", 5), ("mq_text", 3)):
        lines = (out / "predictions" / f"{name}.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert len(recs) == n
        assert results[name]["acc"] == pytest.approx(sum(r["correct"] for r in recs) / n)
        assert set(recs[0]) >= {"id", "gold", "pred", "pred_norm", "correct", "loglik", "prompt_sha256"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"pqa": 6, "mq": 5, "mq_text": 3}
    assert manifest["results"]["pqa"]["n"] == 6
    table = (out / "results.md").read_text().splitlines()
    assert table[2].startswith("| benchmark | n | acc | 95% CI |")
    for name, line in zip(("pqa", "mq", "mq_text"), table[4:]):  # each row shows that benchmark's numbers
        r = results[name]
        lo, hi = r["acc_ci95"]
        assert line.startswith(f"| {name} | {r['n']} | {100 * r['acc']:.1f} | {100 * lo:.1f}-{100 * hi:.1f} | "
                               f"{100 * r['acc_norm']:.1f} | {100 * r['baselines']['majority']:.1f} "
                               f"({r['baselines']['majority_choice']}) | "
                               f"{100 * r['baselines']['constant_choice']['max']:.1f} |"), line
    assert len(table) == 7
    capsys.readouterr()
    run(cfg)
    text = capsys.readouterr().out
    assert "up to date" in text and format_table(results) in text  # the same table is printed again
    assert json.loads((out / "manifest.json").read_text())["created"] == manifest["created"]


def test_bad_benchmark_file_fails_before_model(tmp_path, bench_files):
    pqa, mq = bench_files
    cfg = make_cfg(tmp_path / "e", mq, mq)  # a JSONL given as pubmedqa
    with pytest.raises(UserError, match="format: medqa"):
        run(cfg)
    assert not (tmp_path / "e").exists()


def test_table_format():
    results = {"model": "m", "b": {"n": 2, "acc": 0.5, "acc_ci95": [0.0, 1.0], "acc_norm": 0.5,
                                   "baselines": {"majority": 0.5, "majority_choice": "A",
                                                 "constant_choice": {"max": 0.5}},
                                   "truncated": 0, "questions_per_s": 3.0}}
    results["c"] = {"n": 4, "acc": 0.25, "acc_ci95": [0.0, 0.75], "acc_norm": 0.125,
                    "baselines": {"majority": 0.75, "majority_choice": "no", "constant_choice": {"max": 0.625}},
                    "calibration": {"ece": 0.0421}, "truncated": 1, "unparsable": 2}
    text = format_table(results).splitlines()
    assert text[0] == "model: m  (accuracies in %)"
    assert text[1].split() == ["benchmark", "n", "acc", "95%", "CI", "acc_norm", "majority", "best", "const",
                               "ECE", "trunc", "unparsed", "q/s"]
    assert text[2].split() == ["b", "2", "50.0", "0.0-100.0", "50.0", "50.0", "(A)", "50.0", "-", "0", "-", "3.0"]
    assert text[3].split() == ["c", "4", "25.0", "0.0-75.0", "12.5", "75.0", "(no)", "62.5", "4.2", "1", "2", "-"]
    md = format_table(results, markdown=True).splitlines()
    assert md[4] == "| b | 2 | 50.0 | 0.0-100.0 | 50.0 | 50.0 (A) | 50.0 | - | 0 | - | 3.0 |"
    assert md[5] == "| c | 4 | 25.0 | 0.0-75.0 | 12.5 | 75.0 (no) | 62.5 | 4.2 | 1 | 2 | - |"


def test_cli_missing_benchmark_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pmcllama", "evaluate", "model=tiny-llama", f"out={tmp_path / 'o'}",
         "benchmarks=[{name: q, format: medqa, path: MISSING}]"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "MISSING" in err and "not found" in err


@pytest.mark.shared
def test_real_benchmark_files(shared_data, tiny_model):
    from pmcllama.benchmarks import load_benchmark
    from pmcllama.benchmarks.scoring import evaluate_items

    pqa = load_benchmark("pubmedqa", shared_data / "benchmarks/pubmedqa/ori_pqal_trainval.json")
    assert len(pqa.items) == 500
    assert all(it.prompt.startswith("Abstract: ") and it.prompt.endswith("\nAnswer:") for it in pqa.items)
    mq = load_benchmark("medqa", shared_data / "benchmarks/format_samples/medqa_us_4options_sample.jsonl")
    assert len(mq.items) == 10 and not mq.warnings
    assert all(len(it.choices) == 4 for it in mq.items)
    model, tok = tiny_model
    items = pqa.items[:5] + mq.items[:5]
    recs = evaluate_items(model, tok, items, batch_size=4, progress=False)
    assert len(recs) == 10 and all(len(r["loglik"]) == len(it.choices) for r, it in zip(recs, items))
