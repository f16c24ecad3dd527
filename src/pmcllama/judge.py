"""JUDGE: which of two sets of completions is better, asked of an LLM judge in both orders.

The paper's Fig. 3 as a measurement: the same prompts completed by two models (two
generations.jsonl from `pmcllama generate out=...`, matched by prompt text; or two models and
prompts, completed here greedily with the shared engine), each pair judged by any
OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server, `pmcllama serve`) in both
orders at temperature 0. A verdict that changes with the order is a tie; a reply without a
verdict is retried once, then counted and listed, never read as one. Reported for B against A:
wins/ties/losses, win rate (wins + ties/2)/n with a 95% bootstrap CI, a two-sided sign test,
the position-inconsistency rate, mean lengths and AlpacaEval 2's length-controlled win rate;
with reference answers (prompts_file JSONL with `reference`) the judge sees the reference and
each side is also judged against it. Writes judgments.jsonl (both raw replies per pair),
judge.md, judge.json and judge.png. Replies are cached on disk, so a rerun or a resumed run
asks nothing twice.

\b
Templates (template=):
  paper-relatedness-v1   the paper's Fig. 3 question (relatedness to the input), verbatim
  pairwise-medical-v1    FastChat pair-v2 style: medical correctness, relevance, helpfulness
  FILE.txt               your own: {input}, {output_a}, {output_b}, optionally {reference};
                         the verdict must be [[A]], [[B]] or [[C]] (tie)

\b
    pmcllama judge runs/q/generate/base runs/q/generate/instruction-tuned base_url=http://127.0.0.1:8001/v1
    pmcllama judge model_a=smollm2-135m model_b=runs/finetune base_url=URL model=gpt-4o api_key_env=OPENAI_API_KEY
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from pydantic import Field, model_validator

from pmcllama.config import Config
from pmcllama.errors import ConfigError, UserError
from pmcllama.inputs import iter_jsonl

PAPER_PROMPTS = [
    "For example, chronic obstructive pulmonary disease (COPD)",
    "Robotic cardiac surgery is heart surgery done through",
    "Metformin is the most common medicine for type 2 diabetes",
    "Pneumonia is the sixth leading cause of death and the only infectious disease",
]

STRONG_JUDGE = ("The numbers mean what the judge means: a strong judge (GPT-4-class, or a large local model "
                "behind vLLM or llama.cpp) gives them meaning; a small model as judge only tests the plumbing.")


class JudgeSection(Config):
    """The judge and its prompts (a recipe's `judge` section; `pmcllama judge` adds the two sides)."""

    base_url: Optional[str] = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8001/v1 "
                                                      "(none: a recipe skips judging)")
    model: Optional[str] = Field(None, description="judge model id (default: the only model the endpoint lists)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's API key")
    template: str = Field("pairwise-medical-v1", description="paper-relatedness-v1, pairwise-medical-v1, "
                                                             "or a template file")
    prompts: list[str] = Field(PAPER_PROMPTS, description="prompts completed by both models (default: the "
                                                          "paper's four case-study prompts)")
    prompts_file: Optional[str] = Field(None, description=".txt or .jsonl ('prompt', optional 'reference'); "
                                                          "with two files, only its references are read")
    max_new_tokens: int = Field(64, ge=1, description="completion length when this command completes the prompts")
    max_tokens: int = Field(512, ge=1, description="longest judge reply, in tokens")
    max_reply_chars: int = Field(20000, ge=1, description="a longer judge reply is not read (counted and listed)")
    max_output_chars: int = Field(8000, ge=1, description="a pair with a longer completion is skipped (and listed)")
    concurrency: int = Field(4, ge=1, description="judge calls in flight at once")
    max_retries: int = Field(5, ge=0, description="retries (exponential backoff) on 429, 5xx and lost connections")
    timeout: float = Field(300.0, gt=0, description="seconds per judge call")
    cache: Optional[str] = Field(None, description="judge reply cache (JSONL; default: judge-cache.jsonl in "
                                                   "$PMCLLAMA_CACHE, else ~/.cache/pmcllama)")
    vs_reference: bool = Field(True, description="also judge each side against the reference answer, where one is given")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the win rate's CI")
    seed: int = Field(0, description="bootstrap seed")


class JudgeConfig(JudgeSection):
    a: Optional[str] = Field(None, description="side A: generations.jsonl or a generate output folder")
    b: Optional[str] = Field(None, description="side B (the one whose win rate is reported)")
    model_a: Optional[str] = Field(None, description="instead of a: complete the prompts with this model")
    model_b: Optional[str] = Field(None, description="instead of b: complete the prompts with this model")
    name_a: Optional[str] = Field(None, description="label of side A (default: from its folder or model)")
    name_b: Optional[str] = Field(None, description="label of side B")
    out: str = Field("runs/judge", description="output folder")

    @model_validator(mode="after")
    def _two_sides(self) -> "JudgeConfig":
        files, models_ = (self.a, self.b), (self.model_a, self.model_b)
        if any(files) and any(models_):
            raise ValueError("give two files (a=, b=) or two models (model_a=, model_b=), not both")
        if not all(files) and not all(models_):
            raise ValueError("judge needs two sides: pmcllama judge A.jsonl B.jsonl, or model_a=M1 model_b=M2")
        if all(files) and "prompts" in self.model_fields_set:
            raise ValueError("prompts= is for model_a/model_b; with two files, the pairs are the files' prompts")
        return self


def _label(source: str) -> str:
    p = Path(source)
    return (p.parent.name if p.name == "generations.jsonl" else p.name.removesuffix(".jsonl")) or source


def read_side(source: str) -> list[dict]:
    """The {prompt, completion[, reference]} rows of a generations.jsonl (or its generate folder)."""
    path = Path(source)
    if path.is_dir():
        path = path / "generations.jsonl"
    rows = []
    for lineno, rec in iter_jsonl(path, "generations file"):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) \
                or not isinstance(rec.get("completion"), str):
            raise UserError("record needs string 'prompt' and 'completion' fields", path, lineno)
        rows.append(rec)
    if not rows:
        raise UserError("no generations in the file", path)
    return rows


def read_prompts(cfg: JudgeSection) -> tuple[list[str], dict[str, str]]:
    """The prompts (cfg.prompts, then the file's) and the references given for them."""
    prompts, refs = list(cfg.prompts), {}
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if path.suffix != ".jsonl":
            from pmcllama.generate import GenerateConfig, read_prompts as plain
            return prompts + plain(GenerateConfig(prompts_file=str(path))), refs
        for lineno, rec in iter_jsonl(path, "prompts file"):
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise UserError("record has no string 'prompt' field", path, lineno)
            if rec.get("reference") is not None and not isinstance(rec["reference"], str):
                raise UserError("'reference' must be a string", path, lineno)
            prompts.append(rec["prompt"])
            if rec.get("reference"):
                refs[rec["prompt"]] = rec["reference"]
    return prompts, refs


def _keyed(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """Rows keyed by (prompt, how many times the same prompt came before)."""
    seen: dict[str, int] = {}
    out = {}
    for r in rows:
        k = seen.get(r["prompt"], 0)
        seen[r["prompt"]] = k + 1
        out[(r["prompt"], k)] = r
    return out


def match(rows_a: list[dict], rows_b: list[dict], refs: dict[str, str], max_chars: int) -> tuple[list[dict], list[dict]]:
    """Pairs {prompt, a, b, reference} matched by prompt text (A's order), and the skipped, with why."""
    ka, kb = _keyed(rows_a), _keyed(rows_b)
    pairs, skipped = [], []
    for key, ra in ka.items():
        if key not in kb:
            skipped.append({"prompt": key[0], "why": "missing from B"})
            continue
        rb = kb[key]
        long = [s for s, r in (("A", ra), ("B", rb)) if len(r["completion"]) > max_chars]
        if long:
            skipped.append({"prompt": key[0], "why": f"{long[0]}'s completion is over max_output_chars={max_chars}"})
            continue
        ref = refs.get(key[0]) or ra.get("reference") or rb.get("reference")
        pairs.append({"prompt": key[0], "a": ra["completion"], "b": rb["completion"], "reference": ref})
    skipped += [{"prompt": k[0], "why": "missing from A"} for k in kb if k not in ka]
    return pairs, skipped


def generate_side(model: str, prompts: list[str], max_new_tokens: int, path: Path) -> list[dict]:
    """Complete `prompts` greedily with `model` (the shared engine); rows also written to `path`."""
    from pmcllama import models
    from pmcllama.generate import GenerateConfig, complete

    cfg = GenerateConfig(model=model, prompts=prompts, max_new_tokens=max_new_tokens, stream=False)
    print(f"[judge] completing {len(prompts)} prompts with {model}", flush=True)
    rows = complete(*models.load_model(models.resolve(model), prepack=True), prompts, cfg)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def run(cfg: JudgeConfig, force: bool = False) -> Path:
    from pmcllama.judging.templates import load_template
    from pmcllama.stage import StageResult, run_stage

    if not cfg.base_url:
        raise ConfigError("judge needs an endpoint: base_url=http://HOST:PORT/v1 (e.g. a `pmcllama serve` "
                          "or vLLM server)")
    template = load_template(cfg.template)
    prompts, refs = read_prompts(cfg)
    sides = [(cfg.a, cfg.model_a, cfg.name_a), (cfg.b, cfg.model_b, cfg.name_b)]
    rows = [read_side(f) if f else None for f, _, _ in sides]
    endpoint = connect_endpoint(cfg)  # before any work: a refused key or unknown model is one line
    names = [n or _label(f or m) for f, m, n in sides]
    if names[0] == names[1]:
        names = [f"A ({names[0]})", f"B ({names[1]})"]
    inputs = [p for p in (cfg.a, cfg.b, cfg.prompts_file) if p]
    if cfg.model_a:
        from pmcllama import models
        inputs += [models.resolve(m) for m in (cfg.model_a, cfg.model_b)]
    if Path(cfg.template).is_file():
        inputs.append(cfg.template)

    def work(tmp: Path) -> StageResult:
        got = [r if r is not None else generate_side(m, prompts, cfg.max_new_tokens, tmp / f"generations_{s}.jsonl")
               for r, (_, m, _), s in zip(rows, sides, "ab")]
        pairs, skipped = match(got[0], got[1], refs, cfg.max_output_chars)
        from pmcllama.judging.report import judge_pairs, write_outputs

        judgments = judge_pairs(endpoint, template, pairs, cfg.concurrency, cfg.vs_reference)
        summary = write_outputs(tmp, judgments, skipped, names, endpoint, template, cfg.bootstrap, cfg.seed)
        return StageResult(counts={"pairs": len(pairs), "skipped": len(skipped), "calls": endpoint.calls,
                                   "cached": endpoint.cached},
                           info={"judge": {"base_url": cfg.base_url, "model": endpoint.model,
                                           "template": template.id}, "summary": summary["comparisons"]})

    return run_stage("judge", cfg, cfg.out, inputs, work, force=force)


def connect_endpoint(cfg: JudgeSection):
    from pmcllama import models
    from pmcllama.judging.client import connect

    cache = Path(cfg.cache) if cfg.cache else models.cache_dir() / "judge-cache.jsonl"
    return connect(cfg.base_url, cfg.model, os.environ.get(cfg.api_key_env), cfg.api_key_env, cfg.timeout,
                   cfg.max_retries, cfg.max_tokens, cfg.max_reply_chars, cache)


def judge_recipe(section: JudgeSection | None, out: Path, states: list[tuple[str, str]], extra_prompts: list[str],
                 force: bool = False) -> None:
    """A recipe's judge step: the first and last model state's greedy completions of the judge's
    prompts (the paper's four by default) plus the generate section's, judged into `out/judge`;
    the table is appended to results.md and report.md. Skipped, in one line, without an endpoint."""
    if section is None:
        return
    if not section.base_url:
        print("[judge] skipped: no judge.base_url in the recipe (an OpenAI-compatible endpoint, e.g. "
              "`pmcllama serve` or vLLM, judges the first and last model's completions)", flush=True)
        return
    if len(states) < 2:
        print("[judge] skipped: the recipe has one model state, so there is nothing to compare", flush=True)
        return
    (name_a, model_a), (name_b, model_b) = states[0], states[-1]
    prompts = list(dict.fromkeys(list(section.prompts) + list(extra_prompts)))
    cfg = JudgeConfig(**section.model_dump(exclude={"prompts"}), prompts=prompts, model_a=model_a, model_b=model_b,
                      name_a=name_a, name_b=name_b, out=str(out / "judge"))
    folder = run(cfg, force=force)
    from pmcllama.inputs import read_json
    from pmcllama.judging.report import table

    data = read_json(Path(folder) / "judge.json", "judge.json")
    text = (f"\n## Judged comparison\n\nJudge `{data['judge']['model']}` at {data['judge']['base_url']}, template "
            f"`{data['judge']['template']}`, every pair in both orders (judge/judge.md has each pair).\n\n"
            + table(data["comparisons"], [data["names"]["a"], data["names"]["b"]]) + "\n" + STRONG_JUDGE + "\n")
    for name in ("results.md", "report.md"):
        path = out / name
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        old = old[:old.index("\n## Judged comparison")] if "\n## Judged comparison" in old else old
        path.write_text(old + text, encoding="utf-8")
