"""STAGE 4  evaluate: a model x medical multiple-choice benchmarks -> accuracy by log-likelihood.

Each question is scored the lm-evaluation-harness way (see `benchmarks.scoring`): the
choice with the highest summed log-probability of its continuation is the answer (`acc`),
or the highest per character (`acc_norm`). Every accuracy comes with a 95% bootstrap CI and
the baselines a model must beat (majority answer, always-the-same-choice, random guess),
the calibration of the choice probabilities (softmax over the per-choice logliks: expected
calibration error over 10 bins, and a reliability diagram), and the accuracy per subject
when the items carry one (MedMCQA subject_name, MMLU file subject).

Output folder (`out`):
    results.json              {"model": ..., <benchmark name>: {n, acc, acc_ci95, acc_norm,
                              acc_norm_ci95, baselines, pred_share, truncated, calibration,
                              subjects (when items have one), choices_mode, prompt_template,
                              format, path, precision, max_length, seconds, questions_per_s}}
    results.md                the same as a table
    predictions/<name>.jsonl  one line per question: id, gold, pred, pred_norm, correct,
                              correct_norm, loglik (per choice), truncated, prompt_sha256
                              (+ subject)
    plots/<name>_reliability.png  reliability diagram (accuracy vs confidence per bin)
    manifest.json, config.yaml
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pmcllama.config import Config, require_unique_names
from pmcllama.errors import UserError
from pmcllama.stage import StageResult, run_stage, write_json


class BenchmarkSpec(Config):
    """One benchmark file to score."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="label in results.json and the predictions file name")
    format: Literal["pubmedqa", "medqa", "medmcqa", "mmlu", "mcq"] = Field(
        description="pubmedqa: ori_pqal.json; medqa: MedQA-USMLE JSONL; medmcqa: MedMCQA JSON(L); "
        "mmlu: headerless MMLU CSV (or a folder of them); mcq: generic {question, options, answer} JSONL")
    path: str = Field(description="the benchmark file (mmlu: also a folder of CSVs)")
    choices: Literal["letters", "text"] = Field(
        "letters", description="medqa/mcq only: score option letters ' A'..' D' (lm-eval medqa_4options) "
        "or the option texts (cloze)")
    limit: int | None = Field(None, ge=1, description="score only the first N questions")
    ids: str | None = Field(None, description="pubmedqa only: JSON list/dict of PMIDs to keep "
                            "(e.g. the official test_ground_truth.json)")
    subject: str | None = Field(None, description="mmlu only: subject named in the prompt (default: "
                                "from the file name, anatomy_test.csv -> anatomy)")

    @model_validator(mode="after")
    def _format_options(self) -> "BenchmarkSpec":
        if self.format not in ("medqa", "mcq") and self.choices != "letters":
            raise ValueError("choices='text' applies to format mcq or medqa only")
        if self.format != "pubmedqa" and self.ids is not None:
            raise ValueError("ids applies to format pubmedqa only")
        if self.format != "mmlu" and self.subject is not None:
            raise ValueError("subject applies to format mmlu only")
        if self.name == "model":
            raise ValueError("the name 'model' is reserved in results.json")
        return self


class EvaluateConfig(Config):
    """STAGE 4: multiple-choice accuracy by log-likelihood."""

    model: str = Field(description="model to score: HF folder, .gguf file, stage output, or built-in name")
    out: str = Field("runs/eval", description="output folder (results.json, predictions/)")
    benchmarks: list[BenchmarkSpec] = Field(min_length=1, description="benchmarks to score")
    batch_size: int = Field(8, ge=1, description="questions per forward batch")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32, or bf16 autocast (about 2x faster on CPUs with AMX; log-probs move)")
    max_length: int | None = Field(None, ge=2, description="max tokens per sequence (default: the "
                                   "model's context); longer prompts are cut from the left and counted")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the 95% CIs (0: none)")
    seed: int = Field(0, description="bootstrap random seed")

    @model_validator(mode="after")
    def _unique_names(self) -> "EvaluateConfig":
        require_unique_names(self.benchmarks, "benchmark")
        return self


def run(cfg: EvaluateConfig, force: bool = False) -> Path:
    """Score `cfg.model` on every benchmark; write results.json and predictions/."""
    from pmcllama import models

    for i, b in enumerate(cfg.benchmarks):
        for key in ("path", "ids"):
            value = getattr(b, key)
            folder_ok = key == "path" and b.format == "mmlu" and Path(value).is_dir()
            if value is not None and not Path(value).is_file() and not folder_ok:
                raise UserError(f"benchmark file not found (benchmarks[{i}].{key}, '{b.name}')", value)
    folder = models.resolve(cfg.model)
    inputs: list[str | Path] = [folder]
    inputs += [b.path for b in cfg.benchmarks] + [b.ids for b in cfg.benchmarks if b.ids]
    out = run_stage("evaluate", cfg, cfg.out, inputs=inputs,
                    work=lambda tmp: _work(cfg, folder, tmp), force=force)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    print(format_table(results))
    return out


def _work(cfg: EvaluateConfig, folder: Path, tmp: Path) -> StageResult:
    from pmcllama.benchmarks import load_benchmark

    loaded = {b.name: load_benchmark(b.format, b.path, b.choices, b.limit, b.ids, b.subject)
              for b in cfg.benchmarks}
    for bench in loaded.values():  # every data error is found before the model loads
        for warning in bench.warnings:
            print(f"warning: {warning}")
    model, tok = _load(folder)
    if cfg.precision == "bf16" and next(model.parameters()).device.type == "cpu":
        from pmcllama.training.loop import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            print("warning: this CPU has neither AMX nor AVX-512-BF16: bf16 autocast is emulated "
                  "and slower than fp32 here (use precision=fp32)")
    (tmp / "predictions").mkdir()
    results: dict = {"model": cfg.model}
    for spec in cfg.benchmarks:
        results[spec.name] = _evaluate_one(cfg, spec, loaded[spec.name], model, tok, tmp)
    write_json(tmp / "results.json", results)
    (tmp / "results.md").write_text(format_table(results, markdown=True) + "\n", encoding="utf-8")
    counts = {name: r["n"] for name, r in results.items() if name != "model"}
    return StageResult(counts=counts, info={"model": cfg.model, "results": results})


def _load(folder: Path):
    import torch

    from pmcllama.models import load_model

    device = "cuda" if torch.cuda.is_available() else None
    return load_model(folder, device=device)


def _evaluate_one(cfg: EvaluateConfig, spec: BenchmarkSpec, bench, model, tok, tmp: Path) -> dict:
    from pmcllama.benchmarks.scoring import context_length, evaluate_items
    from pmcllama.benchmarks.stats import by_subject, record_calibration, summarize

    max_length = cfg.max_length or context_length(model, tok)
    t0 = time.perf_counter()
    records = evaluate_items(model, tok, bench.items, cfg.batch_size, cfg.precision, max_length,
                             desc=spec.name)
    seconds = time.perf_counter() - t0
    subjects = [getattr(it, "subject", None) for it in bench.items]
    with open(tmp / "predictions" / f"{spec.name}.jsonl", "w", encoding="utf-8") as f:
        for r, subject in zip(records, subjects):
            f.write(json.dumps({**r, "subject": subject} if subject else r, ensure_ascii=False) + "\n")
    summary = summarize(records, [len(it.choices) for it in bench.items], bench.labels,
                        cfg.bootstrap, cfg.seed)
    calib = record_calibration(records)
    per_subject = by_subject(records, subjects)
    _reliability_plot(calib, spec.name, tmp / "plots" / f"{spec.name}_reliability.png")
    return {
        **summary,
        "calibration": calib,
        **({"subjects": per_subject} if per_subject else {}),
        "choices_mode": spec.choices if spec.format in ("medqa", "mcq") else
        ("labels" if spec.format == "pubmedqa" else "letters"),
        "prompt_template": bench.template,
        "format": spec.format,
        "path": spec.path,
        "precision": cfg.precision,
        "max_length": max_length,
        "seconds": round(seconds, 2),
        "questions_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
    }


def _reliability_plot(calib: dict, name: str, png: Path) -> None:
    from pmcllama.report import plot_reliability

    png.parent.mkdir(exist_ok=True)
    plot_reliability(calib, png, title=f"{name}: reliability (ECE {_pct(calib['ece'])}%)")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_table(results: dict, markdown: bool = False) -> str:
    """Accuracy table: one row per benchmark, baselines beside it."""
    head = ["benchmark", "n", "acc", "95% CI", "acc_norm", "majority", "best const", "ECE", "trunc", "q/s"]
    rows = []
    for name, r in results.items():
        if name == "model" or not isinstance(r, dict):
            continue
        ci = r.get("acc_ci95")
        rows.append([
            name, str(r["n"]), _pct(r["acc"]),
            f"{_pct(ci[0])}-{_pct(ci[1])}" if ci else "-", _pct(r["acc_norm"]),
            f"{_pct(r['baselines']['majority'])} ({r['baselines']['majority_choice']})",
            _pct(r["baselines"]["constant_choice"]["max"]),
            _pct((r.get("calibration") or {}).get("ece")), str(r["truncated"]),
            str(r.get("questions_per_s") or "-"),
        ])
    title = f"model: {results.get('model')}  (accuracies in %)"
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return title + "\n\n" + "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([title, fmt.format(*head)] + [fmt.format(*row) for row in rows])
