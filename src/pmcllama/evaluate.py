"""STAGE 4  evaluate: a model x medical multiple-choice benchmarks -> accuracy by log-likelihood.

Each question is scored the lm-evaluation-harness way (see `benchmarks.scoring`): the
choice with the highest summed log-probability of its continuation is the answer (`acc`),
or the highest per character (`acc_norm`). Every accuracy comes with a 95% bootstrap CI and
the baselines a model must beat (majority answer, always-the-same-choice, random guess).

Output folder (`out`):
    results.json              {"model": ..., <benchmark name>: {n, acc, acc_ci95, acc_norm,
                              acc_norm_ci95, baselines, pred_share, truncated, choices_mode,
                              prompt_template, format, path, precision, max_length, seconds,
                              questions_per_s}}
    results.md                the same as a table
    predictions/<name>.jsonl  one line per question: id, gold, pred, pred_norm, correct,
                              correct_norm, loglik (per choice), truncated, prompt_sha256
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
    format: Literal["pubmedqa", "medqa"] = Field(
        description="pubmedqa: official ori_pqal.json {pmid: record}; medqa: official MedQA-USMLE JSONL")
    path: str = Field(description="the benchmark file")
    choices: Literal["letters", "text"] = Field(
        "letters", description="medqa only: score option letters ' A'..' D' (lm-eval medqa_4options) "
        "or the option texts (cloze)")
    limit: int | None = Field(None, ge=1, description="score only the first N questions")
    ids: str | None = Field(None, description="pubmedqa only: JSON list/dict of PMIDs to keep "
                            "(e.g. the official test_ground_truth.json)")

    @model_validator(mode="after")
    def _format_options(self) -> "BenchmarkSpec":
        if self.format != "medqa" and self.choices != "letters":
            raise ValueError("choices='text' applies to format medqa only")
        if self.format != "pubmedqa" and self.ids is not None:
            raise ValueError("ids applies to format pubmedqa only")
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
            if value is not None and not Path(value).is_file():
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

    loaded = {b.name: load_benchmark(b.format, b.path, b.choices, b.limit, b.ids) for b in cfg.benchmarks}
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
    from pmcllama.benchmarks.stats import summarize

    max_length = cfg.max_length or context_length(model, tok)
    t0 = time.perf_counter()
    records = evaluate_items(model, tok, bench.items, cfg.batch_size, cfg.precision, max_length,
                             desc=spec.name)
    seconds = time.perf_counter() - t0
    with open(tmp / "predictions" / f"{spec.name}.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = summarize(records, [len(it.choices) for it in bench.items], bench.labels,
                        cfg.bootstrap, cfg.seed)
    return {
        **summary,
        "choices_mode": spec.choices if spec.format == "medqa" else "labels",
        "prompt_template": bench.template,
        "format": spec.format,
        "path": spec.path,
        "precision": cfg.precision,
        "max_length": max_length,
        "seconds": round(seconds, 2),
        "questions_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_table(results: dict, markdown: bool = False) -> str:
    """Accuracy table: one row per benchmark, baselines beside it."""
    head = ["benchmark", "n", "acc", "95% CI", "acc_norm", "majority", "best const", "trunc", "q/s"]
    rows = []
    for name, r in results.items():
        if name == "model" or not isinstance(r, dict):
            continue
        ci = r.get("acc_ci95")
        rows.append([
            name, str(r["n"]), _pct(r["acc"]),
            f"{_pct(ci[0])}-{_pct(ci[1])}" if ci else "-", _pct(r["acc_norm"]),
            f"{_pct(r['baselines']['majority'])} ({r['baselines']['majority_choice']})",
            _pct(r["baselines"]["constant_choice"]["max"]), str(r["truncated"]),
            str(r.get("questions_per_s") or "-"),
        ])
    title = f"model: {results.get('model')}  (accuracies in %)"
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return title + "\n\n" + "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([title, fmt.format(*head)] + [fmt.format(*row) for row in rows])
