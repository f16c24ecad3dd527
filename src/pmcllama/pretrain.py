"""STAGE 2: knowledge injection (MedC-K) -- continued causal-LM training on token shards.

Sources from the corpus stage are mixed by weight (PMC-LLaMA: books:papers:general = 15:4:1)
in `packed` mode (contiguous chunks across documents; with `doc_mask: true` attention does not
cross documents) or `window` mode (one random window per document per epoch, PMC-LLaMA v1).
With `save_every`, a killed run continues exactly from its newest checkpoint when rerun
(`resume: true`). The same command under
`torchrun --nproc_per_node N -m pmcllama pretrain ...` trains data-parallel (`distributed:
ddp|fsdp`) at the same global batch. Output: a Hugging Face model folder with
metrics.jsonl, loss.png and manifest.json.
"""
from __future__ import annotations

import math
from pathlib import Path

from pmcllama import models
from pmcllama.errors import UserError
from pmcllama.stage import StageResult
from pmcllama.data.shards import read_corpus
from pmcllama.training import distributed
from pmcllama.training.checkpoint import inputs_identity
from pmcllama.training.config import PretrainConfig
from pmcllama.training.data import Batches, MixtureSampler
from pmcllama.training.loop import train

__all__ = ["PretrainConfig", "run"]


def check_tokenizer(tokenizer, corpus_manifest: dict, corpus_dir: str) -> None:
    """Refuse shards made with another tokenizer than the model's: a different vocabulary size or
    EOS id, or -- when the corpus's tokenizer can still be loaded here -- a different vocabulary
    (two tokenizers of one size, such as Llama-2's and Mistral's 32,000, are not interchangeable)."""
    vocab, eos = corpus_manifest.get("vocab_size"), corpus_manifest.get("eos_token_id")
    name = corpus_manifest.get("tokenizer")
    if vocab != len(tokenizer) or eos != tokenizer.eos_token_id:
        raise UserError(
            f"corpus was tokenized with '{name}' (vocab {vocab}, eos {eos}) but the "
            f"model's tokenizer has vocab {len(tokenizer)}, eos {tokenizer.eos_token_id}; rebuild the corpus "
            "with tokenizer=<this model>", corpus_dir)
    try:
        theirs = models.load_tokenizer(name).get_vocab() if name else None
    except (UserError, OSError, ValueError):
        theirs = None  # the corpus tokenizer is not available here: the size and EOS checks must do
    if theirs is not None and theirs != tokenizer.get_vocab():
        differ = sorted(set(theirs.items()) ^ set(tokenizer.get_vocab().items()), key=lambda kv: kv[1])[:3]
        raise UserError(f"corpus was tokenized with '{name}', whose vocabulary differs from the model's "
                        f"(same size {vocab}; e.g. {differ}); rebuild the corpus with tokenizer=<this model>",
                        corpus_dir)


def check_sources(shards: dict, weights: dict[str, float], corpus_dir: str) -> None:
    """Every source that gets a weight must have tokens."""
    for name, w in weights.items():
        if w > 0 and shards[name].num_tokens == 0:
            others = {k: v for k, v in weights.items() if k != name}
            raise UserError(f"corpus source '{name}' is empty (0 tokens); leave it out with weights={others} "
                            "or rebuild the corpus", corpus_dir)


def mixture_weights(cfg: PretrainConfig, manifest: dict) -> dict[str, float]:
    sources = manifest.get("sources") or {}
    if cfg.weights is None:
        weights = {name: float(info.get("weight", 1.0)) for name, info in sources.items()}
        bad = {k: w for k, w in weights.items() if not math.isfinite(w) or w <= 0}
        if bad:
            raise UserError(f"corpus manifest gives source weights that are not > 0: {bad}; set weights= "
                            "to choose the mixture", Path(cfg.data) / "manifest.json")
        return weights
    unknown = sorted(set(cfg.weights) - set(sources))
    if unknown:
        raise UserError(f"weights name unknown corpus source(s) {unknown}; the corpus has {sorted(sources)}", cfg.data)
    return dict(cfg.weights)


VAL_SEED_OFFSET = 1_000_003  # validation sequences come from the mixture under seed + this


def validation_split(shards, weights: dict, cfg: PretrainConfig) -> tuple[list, dict[str, list[int]]]:
    """`val_sequences` sequences drawn from the mixture with a seed of their own, and the units
    (chunks in packed mode, documents in window mode) they came from, held out of training."""
    if not cfg.val_sequences:
        return [], {}
    sampler = MixtureSampler(shards, weights, cfg.seq_len, cfg.mode, cfg.seed + VAL_SEED_OFFSET, doc_mask=cfg.doc_mask)
    return sampler.hold_out(cfg.val_sequences)


def run(cfg: PretrainConfig, force: bool = False) -> Path:
    if cfg.eval_every and not cfg.val_sequences:
        raise UserError("eval_every needs validation sequences: set val_sequences > 0")
    manifest, shards = read_corpus(cfg.data)
    weights = mixture_weights(cfg, manifest)
    model_dir = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(model_dir)
    check_tokenizer(tokenizer, manifest, cfg.data)
    check_sources(shards, weights, cfg.data)

    def work(tmp: Path) -> StageResult:
        model, _ = models.load_model(model_dir)
        val, held_out = validation_split(shards, weights, cfg)
        sampler = MixtureSampler(shards, weights, cfg.seq_len, cfg.mode, cfg.seed, exclude=held_out,
                                 doc_mask=cfg.doc_mask)
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * sampler.epoch_size / cfg.global_batch))
        distributed.say(f"[pretrain] {cfg.model}: {total} steps x {cfg.global_batch} sequences x {cfg.seq_len} tokens, "
              f"sources {weights}")
        summary = train(model, tokenizer, cfg, Batches(sampler, cfg.global_batch), total, tmp, val=val,
                        inputs=inputs_identity(cfg.data, model_dir))
        return StageResult(
            counts={"steps": summary["steps"], "tokens": summary["tokens"]},
            info={"base_model": cfg.model, "seq_len": cfg.seq_len, "tokenizer": manifest.get("tokenizer"),
                  "weights": weights, "train": summary})

    return distributed.run_stage("pretrain", cfg, cfg.out, [cfg.data, model_dir], work, force=force,
                                 resumable=cfg.resume)

