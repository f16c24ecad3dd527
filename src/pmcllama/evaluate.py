"""STAGE 4  evaluate: a model x medical multiple-choice benchmarks -> accuracy with CIs.

Scoring modes (`mode`):

mode=loglik (default): each question is scored the lm-evaluation-harness way (see
`benchmarks.scoring`; the prompts, identical to lm-eval's, in each `benchmarks.<format>`
module): the choice with the highest summed log-probability of its continuation is the
answer (`acc`), or the highest per character (`acc_norm`).

mode=generate: the model writes an answer after the same prompt (greedy, or sampled with
temperature/top_p); the answer is read from the text ("OPTION B IS CORRECT", "B.", "the
answer is B", "Answer: B", yes/no/maybe, an option's text: `benchmarks.extract`). Texts
that name no choice count as wrong and are reported as `unparsable`.

mode=cot: a reason-then-answer prompt ("Think step by step, then finish with 'The answer
is X'"), `self_consistency` sampled answers per question and a majority vote.

`shots=k` puts k solved examples from each benchmark's `fewshot_path` (a train/dev file,
never the evaluated one) before every question, drawn with `seed` (per question, or once for
all with `fewshot_fixed=true`, whose shared examples are then computed once); `chat_template=true`
wraps the prompt in the model's chat template (`benchmarks.prompting`).

Every accuracy comes with a 95% bootstrap CI and the baselines a model must beat
(majority answer, always-the-same-choice, random guess), the calibration of the choice
probabilities (loglik: softmax over the per-choice logliks; generate/cot with several
samples: the share of votes of the answer; expected calibration error over 10 bins and a
reliability diagram), and the accuracy per subject when the items carry one (MedMCQA
subject_name, MMLU file subject). Prompts longer than the model's context are cut from
the left and counted (`truncated`).

Output folder (`out`):
    results.json              {"model": ..., <benchmark name>: {n, acc, acc_ci95, acc_norm,
                              acc_norm_ci95, baselines, pred_share, truncated, unparsable,
                              calibration, subjects (when items have one), mode, shots,
                              fewshot_fixed, seed, chat_template, fewshot_path,
                              prompt_template, choices_mode, format, path, model_path,
                              model_manifest, precision, max_length,
                              generation (generate/cot), seconds, questions_per_s}}
    results.md                the same as a table
    predictions/<name>.jsonl  one line per question: id, gold, pred, correct, truncated,
                              prompt_sha256 (+ subject); loglik: pred_norm, correct_norm,
                              loglik per choice; generate/cot: responses, sample_preds,
                              votes, parsed, confidence
    plots/<name>_reliability.png  reliability diagram (accuracy vs confidence per bin)
    manifest.json, config.yaml
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pmcllama import models
from pmcllama.benchmarks import CHOICE_FORMATS, check_options, load_benchmark
from pmcllama.benchmarks.generation import evaluate_generated, hf_generate_fn, token_lengths
from pmcllama.benchmarks.prompting import build, check_fewshot_file, template_name
from pmcllama.benchmarks.scoring import context_length, evaluate_items
from pmcllama.benchmarks.stats import by_subject, record_calibration, summarize
from pmcllama.config import Config, require_unique_names
from pmcllama.errors import UserError
from pmcllama.inputs import read_json
from pmcllama.report import plot_reliability
from pmcllama.stage import StageResult, read_manifest, run_stage, write_json


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
    fewshot_path: str | None = Field(None, description="train/dev file of the same format to draw the "
                                     "`shots` examples from (never the evaluated file)")

    @model_validator(mode="after")
    def _format_options(self) -> "BenchmarkSpec":
        check_options(self.format, self.choices, self.ids, self.subject)
        if self.name == "model":
            raise ValueError("the name 'model' is reserved in results.json")
        return self


class EvaluateConfig(Config):
    """STAGE 4: multiple-choice accuracy by log-likelihood, generation or chain-of-thought."""

    model: str = Field("smollm2-135m", description="model to score: HF folder, .gguf file, stage output, or built-in name")
    out: str = Field("runs/eval", description="output folder (results.json, predictions/)")
    benchmarks: list[BenchmarkSpec] = Field([], description="benchmarks to score (at least one)")
    batch_size: int | None = Field(None, ge=1, description="loglik: at most this many questions per "
                                   "forward (default: as many as max_batch_tokens holds); generate/cot: "
                                   "prompts per batch (default 8)")
    max_batch_tokens: int = Field(2048, ge=1, description="loglik: model-input tokens per forward, "
                                  "filled longest question first (one longer question goes alone)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32, or bf16 autocast (about 2x faster on CPUs with AMX; log-probs move)")
    max_length: int | None = Field(None, ge=2, description="max tokens per sequence (default: the "
                                   "model's context); longer prompts are cut from the left and counted")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the 95% CIs (0: none)")
    seed: int = Field(0, description="seed of the bootstrap, the few-shot draws and sampling")
    mode: Literal["loglik", "generate", "cot"] = Field(
        "loglik", description="loglik: choice log-likelihoods (lm-eval); generate: read the answer "
        "from generated text; cot: reason then answer, `self_consistency` samples voted")
    shots: int = Field(0, ge=0, description="solved examples before each question, drawn from each "
                       "benchmark's fewshot_path (loglik and generate)")
    fewshot_fixed: bool = Field(False, description="shots: the same k examples (drawn once with seed) "
                                "before every question, as lm-eval's fewshot_config; loglik computes "
                                "their keys and values once")
    chat_template: bool = Field(False, description="wrap each prompt in the model's chat template")
    max_new_tokens: int | None = Field(None, ge=1, description="generate/cot: tokens per answer "
                                       "(default 16 for generate, 256 for cot)")
    temperature: float = Field(0.0, ge=0, description="generate/cot: 0 = greedy, > 0 = sampling")
    top_p: float = Field(1.0, gt=0, le=1, description="generate/cot: nucleus mass when sampling")
    self_consistency: int = Field(1, ge=1, description="generate/cot: sampled answers per question, "
                                  "majority vote (above 1 needs temperature > 0)")

    @model_validator(mode="after")
    def _consistent(self) -> "EvaluateConfig":
        require_unique_names(self.benchmarks, "benchmark")
        if self.mode == "loglik" and (self.temperature > 0 or self.self_consistency > 1
                                      or self.max_new_tokens is not None):
            raise ValueError("temperature, self_consistency and max_new_tokens apply to mode "
                             "generate or cot, not loglik")
        if self.self_consistency > 1 and self.temperature == 0:
            raise ValueError("self_consistency > 1 needs temperature > 0 (greedy answers are identical)")
        if self.shots and self.mode == "cot":
            raise ValueError("shots apply to mode loglik or generate: the benchmark files carry no "
                             "worked reasoning to show in cot examples")
        for b in self.benchmarks:
            if self.shots and not b.fewshot_path:
                raise ValueError(f"shots={self.shots} needs fewshot_path for benchmark '{b.name}'")
            if b.fewshot_path and not self.shots:
                raise ValueError(f"benchmark '{b.name}' has a fewshot_path but shots=0")
        if self.fewshot_fixed and not self.shots:
            raise ValueError("fewshot_fixed applies when shots > 0")
        return self

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or (256 if self.mode == "cot" else 16)


def run(cfg: EvaluateConfig, force: bool = False) -> Path:
    """Score `cfg.model` on every benchmark; write results.json and predictions/."""
    if not cfg.benchmarks:
        raise UserError("no benchmarks to score: give benchmarks=[{name: ..., format: ..., path: ...}]")
    for i, b in enumerate(cfg.benchmarks):
        for key in ("path", "ids", "fewshot_path"):
            value = getattr(b, key)
            folder_ok = key != "ids" and b.format == "mmlu" and value is not None and Path(value).is_dir()
            if value is not None and not Path(value).is_file() and not folder_ok:
                raise UserError(f"benchmark file not found (benchmarks[{i}].{key}, '{b.name}')", value)
        if b.fewshot_path:
            check_fewshot_file(b.fewshot_path, b.path)
    folder = models.resolve(cfg.model)
    inputs: list[str | Path] = [folder]
    inputs += [b.path for b in cfg.benchmarks] + [b.ids for b in cfg.benchmarks if b.ids]
    inputs += [b.fewshot_path for b in cfg.benchmarks if b.fewshot_path]
    out = run_stage("evaluate", cfg, cfg.out, inputs=inputs,
                    work=lambda tmp: _work(cfg, folder, tmp), force=force)
    results = read_json(out / "results.json", "results file")
    print(format_table(results))
    return out


def _work(cfg: EvaluateConfig, folder: Path, tmp: Path) -> StageResult:
    loaded = {b.name: load_benchmark(b.format, b.path, b.choices, b.limit, b.ids, b.subject)
              for b in cfg.benchmarks}
    pools = {b.name: load_benchmark(b.format, b.fewshot_path, b.choices, subject=b.subject).items
             for b in cfg.benchmarks if b.fewshot_path}
    for bench in loaded.values():  # every data error is found before the model loads
        for warning in bench.warnings:
            print(f"warning: {warning}")
    model, tok = load_for(folder, cfg.mode, cfg.precision)
    model_meta = _model_manifest(folder)
    if cfg.precision == "bf16" and next(model.parameters()).device.type == "cpu":
        from pmcllama.training.loop import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            print("warning: this CPU has neither AMX nor AVX-512-BF16: bf16 autocast is emulated "
                  "and slower than fp32 here (use precision=fp32)")
    (tmp / "predictions").mkdir()
    results: dict = {"model": cfg.model}
    for spec in cfg.benchmarks:
        bench = loaded[spec.name]
        items = build(bench.items, cfg.mode, cfg.shots, pools.get(spec.name, ()), cfg.seed, tok,
                      cfg.chat_template, cfg.fewshot_fixed)
        entry = _evaluate_one(cfg, spec, bench, items, model, tok, tmp)
        if entry["truncated"]:
            print(f"warning: {spec.name}: {entry['truncated']} of {entry['n']} prompts were longer "
                  f"than max_length={entry['max_length']} tokens and were cut from the left")
        results[spec.name] = {**entry, "data_warnings": bench.warnings, **model_meta}
    write_json(tmp / "results.json", results)
    (tmp / "results.md").write_text(format_table(results, markdown=True) + "\n", encoding="utf-8")
    counts = {name: r["n"] for name, r in results.items() if name != "model"}
    return StageResult(counts=counts, info={"model": cfg.model, "results": results})


def load_for(folder: Path, mode: str = "loglik", precision: str = "fp32", device: str | None = None):
    """(model, tokenizer) for scoring in `mode` (on CUDA when there is one, unless `device`). On a
    CPU in fp32 the Linear layers are prepacked for oneDNN (`pmcllama.prepack`): to generate
    (generate/cot, with `pmcllama.gemv`'s kernels for few rows), and for loglik, whose products of
    hundreds of rows oneDNN runs faster than PyTorch's default GEMM (scoring took 1.4-1.8x less
    time on an AMD EPYC with AVX-512, 1.0-1.1x less with oneDNN held to AVX2; the same
    predictions); loglik keeps no plain copies for the few-row kernels. bf16 scoring keeps
    PyTorch's layers, which autocast turns to bf16."""
    import torch

    from pmcllama.prepack import prepack_linears

    model, tok = models.load_model(folder, device=device or ("cuda" if torch.cuda.is_available() else None))
    if mode != "loglik" or precision == "fp32":  # a no-op where it does not apply (CUDA, ...)
        prepack_linears(model, gemv=mode != "loglik")
    return model, tok


def _model_manifest(folder: Path) -> dict:
    """Where the model came from: its folder, architecture, size, and its stage manifest if any."""
    info = models.model_info(folder)
    meta = {k: info[k] for k in ("architecture", "parameters", "vocab_size", "context_length", "dtype")}
    if (folder / "manifest.json").is_file():
        m = read_manifest(folder)
        meta["stage"] = {k: m.get(k) for k in ("stage", "created", "git_revision", "fingerprint")}
    return {"model_path": str(folder), "model_manifest": meta}


def _score(cfg: EvaluateConfig, spec: BenchmarkSpec, items, model, tok, max_length: int) -> list[dict]:
    if cfg.mode == "loglik":
        return evaluate_items(model, tok, items, cfg.batch_size, cfg.precision, max_length, desc=spec.name,
                              max_batch_tokens=cfg.max_batch_tokens)
    lengths = token_lengths(tok, [it.prompt for it in items])
    room = max(1, max_length - cfg.new_tokens)
    fn = hf_generate_fn(model, tok, max_new_tokens=cfg.new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, seed=cfg.seed, max_length=max_length)
    return evaluate_generated(items, fn, samples=cfg.self_consistency, batch_size=cfg.batch_size or 8,
                              cot=cfg.mode == "cot", truncated=[n > room for n in lengths],
                              lengths=lengths, desc=spec.name)


def _evaluate_one(cfg: EvaluateConfig, spec: BenchmarkSpec, bench, items, model, tok, tmp: Path) -> dict:
    max_length = cfg.max_length or context_length(model, tok)
    t0 = time.perf_counter()
    records = _score(cfg, spec, items, model, tok, max_length)
    seconds = time.perf_counter() - t0
    subjects = [getattr(it, "subject", None) for it in items]
    with open(tmp / "predictions" / f"{spec.name}.jsonl", "w", encoding="utf-8") as f:
        for r, subject in zip(records, subjects):
            f.write(json.dumps({**r, "subject": subject} if subject else r, ensure_ascii=False) + "\n")
    summary = summarize(records, [len(it.choices) for it in items], bench.labels, cfg.bootstrap, cfg.seed)
    calib = None
    if cfg.mode == "loglik" or cfg.self_consistency > 1:
        calib = record_calibration(records)
        _reliability_plot(calib, spec.name, tmp / "plots" / f"{spec.name}_reliability.png")
    per_subject = by_subject(records, subjects)
    generation = None if cfg.mode == "loglik" else {
        "max_new_tokens": cfg.new_tokens, "temperature": cfg.temperature,
        "top_p": cfg.top_p if cfg.temperature > 0 else None, "samples": cfg.self_consistency}
    return {
        **summary,
        "calibration": calib,
        **({"subjects": per_subject} if per_subject else {}),
        "mode": cfg.mode, "shots": cfg.shots, "fewshot_fixed": cfg.fewshot_fixed, "seed": cfg.seed,
        "chat_template": cfg.chat_template,
        "fewshot_path": spec.fewshot_path,
        "prompt_template": template_name(bench.template, cfg.mode, cfg.shots, cfg.chat_template),
        "choices_mode": spec.choices if spec.format in CHOICE_FORMATS else
        ("labels" if spec.format == "pubmedqa" else "letters"),
        "format": spec.format,
        "path": spec.path,
        "precision": cfg.precision,
        "max_length": max_length,
        **({"generation": generation} if generation else {}),
        "seconds": round(seconds, 2),
        "questions_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
    }


def _reliability_plot(calib: dict, name: str, png: Path) -> None:
    png.parent.mkdir(exist_ok=True)
    plot_reliability(calib, png, title=f"{name}: reliability (ECE {_pct(calib['ece'])}%)")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_table(results: dict, markdown: bool = False) -> str:
    """Accuracy table: one row per benchmark, baselines beside it."""
    head = ["benchmark", "n", "acc", "95% CI", "acc_norm", "majority", "best const", "ECE", "trunc",
            "unparsed", "q/s"]
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
            str(r["unparsable"]) if r.get("unparsable") is not None else "-",
            str(r.get("questions_per_s") or "-"),
        ])
    title = f"model: {results.get('model')}  (accuracies in %)"
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return title + "\n\n" + "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([title, fmt.format(*head)] + [fmt.format(*row) for row in rows])
