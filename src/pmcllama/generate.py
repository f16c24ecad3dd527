"""STAGE 5: complete prompts -- the paper's zero-shot sentence-completion case studies.

Prompts come from the command line (`pmcllama generate model=M "Prompt one" "Prompt two"`),
from `prompts=[...]`, or from a file (.txt: one per line; .jsonl: a `prompt` field). Tokens
stream to the terminal; with `out=` the completions are also written to generations.jsonl.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import Field

from pmcllama import models
from pmcllama.config import Config
from pmcllama.errors import UserError
from pmcllama.inputs import iter_jsonl, read_text
from pmcllama.stage import StageResult, run_stage


class GenerateConfig(Config):
    model: str = Field("smollm2-135m", description="model: HF folder, .gguf file, built-in name, or a stage output")
    prompts: list[str] = Field([], description="prompts to complete (also: bare command-line arguments)")
    prompts_file: Optional[str] = Field(None, description=".txt (one prompt per line) or .jsonl with a 'prompt' field")
    max_new_tokens: int = Field(64, ge=1, description="tokens to generate per prompt")
    temperature: float = Field(0.0, ge=0, description="0 = greedy; > 0 = sampling at this temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass (when sampling)")
    repetition_penalty: float = Field(1.0, gt=0, description="1.0 = none")
    chat: bool = Field(False, description="wrap each prompt as a user turn in the model's chat template")
    seed: int = Field(0, description="sampling seed")
    out: Optional[str] = Field(None, description="folder to write generations.jsonl + manifest (optional)")
    stream: bool = Field(True, description="print tokens as they are generated")


def read_prompts(cfg: GenerateConfig) -> list[str]:
    prompts = list(cfg.prompts)
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if path.suffix == ".jsonl":
            found = []
            for lineno, rec in iter_jsonl(path, "prompts file"):
                if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                    raise UserError("record has no string 'prompt' field", path, lineno)
                found.append(rec["prompt"])
        else:
            found = [line for line in read_text(path, "prompts file").splitlines() if line.strip()]
        if not found:
            raise UserError("prompts file has no prompts", path)
        prompts += found
    if not prompts:
        raise UserError("no prompts: pass them as arguments, prompts=[...], or prompts_file=FILE")
    return prompts


def complete(model, tokenizer, prompts: list[str], cfg: GenerateConfig, echo=print) -> list[dict]:
    """Complete each prompt with the shared engine; stream to `echo` when cfg.stream (one prompt
    at a time, so the text reads in order), else all prompts in one batch."""
    from pmcllama.serve.engine import Engine, Request

    engine = Engine(model, tokenizer)
    reqs = []
    for prompt in prompts:
        if cfg.chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                add_generation_prompt=True, return_dict=True)["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        reqs.append(Request(list(ids), max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=cfg.seed, repetition_penalty=cfg.repetition_penalty))
    if cfg.stream:
        for prompt, req in zip(prompts, reqs):
            echo(f"\n>>> {prompt}", end="" if not cfg.chat else "\n")
            req.on_delta = lambda _, text: echo(text, end="", flush=True)
            engine.generate([req])
        echo("")
    else:
        engine.generate(reqs)
    return [{"prompt": p, "completion": r.texts[0], "new_tokens": len(r.token_ids[0])}
            for p, r in zip(prompts, reqs)]


def run(cfg: GenerateConfig, force: bool = False) -> list[dict] | Path:
    prompts = read_prompts(cfg)
    model_dir = models.resolve(cfg.model)
    if not cfg.out:
        return complete(*models.load_model(model_dir, prepack=True), prompts, cfg)

    def work(tmp: Path) -> StageResult:
        rows = complete(*models.load_model(model_dir, prepack=True), prompts, cfg)
        with open(tmp / "generations.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return StageResult(counts={"prompts": len(rows)}, info={"model": cfg.model})

    inputs = [model_dir] + ([cfg.prompts_file] if cfg.prompts_file else [])
    return run_stage("generate", cfg, cfg.out, inputs, work, force=force)
