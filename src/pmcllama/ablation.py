"""The paper's Table 1 as a recipe section: the same task fine-tuning from several model states.

    ablation:
      instructions: {sources: [...]}     # the task fine-tuning set (null: the recipe's instructions)
      finetune: {lr: 2.0e-5, epochs: 3}  # settings every arm shares (null: the recipe's finetune)
      arms:
        - {name: llama_full, start: base}                              # the control
        - {name: pmc_full, start: pretrain}                            # knowledge-injected
        - {name: llama_lora, start: base, finetune: {lora: {rank: 8}}}
        - {name: pmc_lora, start: pretrain, finetune: {lora: {rank: 8}}}

Each arm fine-tunes its starting state (`base`, `pretrain`: after knowledge injection,
`finetune`: after instruction tuning) with the shared settings plus its own overrides, into
`ablation/<arm>/`, and is evaluated on the same items as every other state. An arm that does
not start from the base model is paired in the report with its twin: the arm named by `twin`,
or else the base-started arm with the same overrides (PMC-LLaMA full against LLaMA full, LoRA
against LoRA). Stages are cached like any other, so arms share the corpus, the pretraining and
the instruction set, and a rerun trains nothing twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from pmcllama.config import Config, build_config, require_unique_names
from pmcllama.errors import ConfigError
from pmcllama.stage import sha256_file
from pmcllama.instructions import InstructionsConfig
from pmcllama.training.config import FinetuneConfig

STARTS = {"base": "base", "pretrain": "knowledge-injected", "finetune": "instruction-tuned"}  # start -> state label


class ArmConfig(Config):
    """One arm: task fine-tuning of one model state."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
                      description="arm name: its row in the table and its folder ablation/<name>")
    start: Literal["base", "pretrain", "finetune"] = Field(
        description="model it fine-tunes: base (the control), pretrain (after knowledge injection) "
                    "or finetune (after instruction tuning)")
    finetune: dict[str, Any] = Field(default_factory=dict,
                                     description="overrides of the shared finetune settings, e.g. {lora: {rank: 8}}")
    twin: Optional[str] = Field(None, description="arm it is paired with in the report (default: the "
                                                  "base-started arm with the same overrides)")


class AblationConfig(Config):
    """Task fine-tuning arms evaluated side by side (the paper's Table 1)."""

    instructions: Optional[InstructionsConfig] = Field(
        None, description="the task fine-tuning set (null: the recipe's instructions stage)")
    finetune: Optional[FinetuneConfig] = Field(
        None, description="fine-tuning settings the arms share (null: the recipe's finetune section)")
    arms: list[ArmConfig] = Field(min_length=1, description="the arms, in table order")
    modes: list[Literal["loglik", "generate"]] = Field(
        ["loglik"], min_length=1, description="how the arms are scored: loglik (evaluate's settings) and/or "
        "generate (greedy answers, chat template when trained with it, answer extraction)")
    max_new_tokens: Optional[int] = Field(
        None, ge=1, description="generate mode: tokens per answer (null: evaluate's default, 16; an arm "
                                "trained to write a rationale first needs more, e.g. 256)")
    ema: float = Field(0.0, ge=0, lt=1, description="EMA smoothing of the arms' loss curves in "
                                                    "ablation_loss.png (0 = raw)")

    @model_validator(mode="after")
    def _arms(self) -> "AblationConfig":
        require_unique_names(self.arms, "ablation arm")
        names = {a.name for a in self.arms}
        for a in self.arms:
            if a.name in STARTS.values():
                raise ValueError(f"ablation arm name '{a.name}' is a model state's label; choose another")
            if a.twin is not None and a.twin not in names:
                raise ValueError(f"ablation arm '{a.name}': twin '{a.twin}' is not an arm")
        return self


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def arm_finetune(shared: FinetuneConfig, arm: ArmConfig) -> FinetuneConfig:
    """The arm's finetune config: the shared settings with its overrides (links not set)."""
    links = {"data", "model", "out"} & set(arm.finetune)
    if links:
        raise ConfigError(f"ablation arm '{arm.name}': finetune.{sorted(links)[0]} is filled in by the "
                          "recipe runner; remove it")
    data = _merge(shared.model_dump(exclude_unset=True), arm.finetune)
    return build_config(FinetuneConfig, data, source=f"ablation arm '{arm.name}' finetune")


def twins(arms: list[ArmConfig]) -> dict[str, str]:
    """{arm: its control twin} for every arm not started from the base model that has one."""
    controls = [a for a in arms if a.start == "base"]
    pairs = {}
    for a in arms:
        if a.start == "base" and a.twin is None:
            continue
        twin = a.twin or next((c.name for c in controls if c.finetune == a.finetune), None)
        if twin is not None:
            pairs[a.name] = twin
    return pairs


def check_held_out(evaluated: dict[str, str], training: dict[str, list[str]]) -> None:
    """Refuse an evaluation file that is also training data: the same file, a file inside a training
    folder, or a training file with the same bytes. {benchmark: path}, {training source: paths}."""
    for bench, spec in evaluated.items():
        target = Path(spec).resolve()
        if not target.is_file():
            continue
        for source, paths in training.items():
            for given in (Path(p).resolve() for p in paths):
                same = given == target or target.is_relative_to(given) or (
                    given.is_file() and given.stat().st_size == target.stat().st_size
                    and sha256_file(given) == sha256_file(target))
                if same:
                    raise ConfigError(f"benchmark '{bench}' evaluates {spec}, which is also training data of "
                                      f"{source} ({given}); evaluate on a held-out file")
