"""STAGE 3b: instruction tuning (MedC-I) on the instruction stage's chat JSONL.

Loss only on assistant tokens; the model's chat template or PMC-LLaMA's Alpaca prompt;
full fine-tuning or LoRA (`lora:` section; merged on save, adapter kept in adapter/).
With `packing: true`, several examples share each seq_len sequence without attending to each
other, so no compute goes to padding. With `save_every`, a killed run continues exactly from its
newest checkpoint when rerun. Under `torchrun --nproc_per_node N -m pmcllama finetune ...` it
trains data-parallel (`distributed: ddp|fsdp`) at the same global batch.
"""
from __future__ import annotations

import math
from pathlib import Path

from pmcllama import models
from pmcllama.errors import UserError
from pmcllama.stage import StageResult, read_manifest
from pmcllama.training import distributed
from pmcllama.training.checkpoint import inputs_identity
from pmcllama.training.config import FinetuneConfig, LoraConfig
from pmcllama.training.data import Batches, EpochStream, encode_chat, read_chat_jsonl
from pmcllama.training.loop import train
from pmcllama.training.packing import PackedBatches, steps_per_epoch

__all__ = ["FinetuneConfig", "LoraConfig", "run"]


def encode_records(tokenizer, records: list[dict], cfg: FinetuneConfig):
    """Encoded examples and the number of records dropped because truncation left no answer."""
    examples = [encode_chat(tokenizer, r["messages"], cfg.template, cfg.seq_len) for r in records]
    kept = [e for e in examples if e is not None]
    for e, r in zip(examples, records):
        if e is not None:
            e.source = r.get("source", "")
    return kept, len(examples) - len(kept)


def batch_stream(examples: list, cfg: FinetuneConfig):
    """(global batches, number of steps): examples one per row, or packed `seq_len` rows."""
    if not cfg.packing:
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(examples) / cfg.global_batch))
        return Batches(EpochStream(examples, cfg.seed), cfg.global_batch), total
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch(
        lambda: EpochStream(examples, cfg.seed), cfg.global_batch, cfg.seq_len)))
    return PackedBatches(EpochStream(examples, cfg.seed), cfg.global_batch, cfg.seq_len), total


def run(cfg: FinetuneConfig, force: bool = False) -> Path:
    manifest = read_manifest(cfg.data)
    files = manifest.get("files") or {}
    if not files.get("train"):
        raise UserError("not an instructions stage output (no files.train in manifest.json)", cfg.data)
    train_path = Path(cfg.data) / files["train"]
    val_path = Path(cfg.data) / files["val"] if files.get("val") else None
    model_dir = models.resolve(cfg.model)

    def work(tmp: Path) -> StageResult:
        model, tokenizer = models.load_model(model_dir)
        examples, dropped = encode_records(tokenizer, read_chat_jsonl(train_path), cfg)
        if not examples:
            raise UserError(f"no training example keeps an answer within seq_len {cfg.seq_len}", train_path)
        val = []
        if (cfg.eval_val or cfg.eval_every) and val_path is not None and val_path.stat().st_size > 0:
            val, _ = encode_records(tokenizer, read_chat_jsonl(val_path), cfg)
        if cfg.eval_every and not val:
            raise UserError("eval_every needs a validation split with examples (val.jsonl)", cfg.data)
        steps, total = batch_stream(examples, cfg)
        distributed.say(f"[finetune] {cfg.model}: {len(examples)} examples ({dropped} dropped by truncation), "
              f"{total} steps x {cfg.global_batch}{' packed rows' if cfg.packing else ''}, template={cfg.template}, "
              f"{'LoRA r=%d' % cfg.lora.rank if cfg.lora else 'full fine-tune'}")
        summary = train(model, tokenizer, cfg, steps, total, tmp, val=val, inputs=inputs_identity(cfg.data, model_dir))
        return StageResult(
            counts={"examples": len(examples), "dropped_truncated": dropped, "steps": summary["steps"],
                    "tokens": summary["tokens"]},
            info={"base_model": cfg.model, "seq_len": cfg.seq_len, "template": cfg.template,
                  "lora": cfg.lora.model_dump() if cfg.lora else None, "train": summary})

    return distributed.run_stage("finetune", cfg, cfg.out, [cfg.data, model_dir], work, force=force,
                                 resumable=cfg.resume)
