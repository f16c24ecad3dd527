"""Config shared by the two training stages (pretrain and finetune): one loop, one schema."""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from pmcllama.config import Config


class LoraConfig(Config):
    """LoRA as a model transform (models.attach_lora); merged into the base weights on save (models.merge_lora)."""

    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA path")
    targets: list[str] = Field(["q_proj", "v_proj"], description="module names to adapt")


class OptimizerConfig(Config):
    """AdamW and the learning-rate schedule: linear warmup to `lr`, then a decay to a floor."""

    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW beta1, beta2: decay rates of the "
                                       "gradient's running mean and of its square")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon, added to the denominator")
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW decoupled weight decay (not applied to norms and biases)")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps from 0 to lr")
    decay: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="after warmup: cosine or linear decay to min_lr_ratio x lr at the last step, "
        "or a constant lr")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr (cosine and linear decay)")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must each be in [0, 1), got {list(v)}")
        return v


class TrainConfig(Config):
    model: str = Field("smollm2-135m", description="base model: HF folder, .gguf file, built-in name, or a stage output")
    data: str = Field(..., description="input folder: a corpus (pretrain) or instructions (finetune) stage output")
    out: str = Field(..., description="output folder (a Hugging Face model folder plus logs)")
    seq_len: int = Field(512, ge=8, description="tokens per training sequence")
    micro_batch: int = Field(8, ge=1, description="sequences per forward/backward pass")
    global_batch: int = Field(32, ge=1, description="sequences per optimizer step over all processes (gradient accumulation fills the gap)")
    lr: float = Field(2e-5, gt=0, description="peak learning rate (AdamW; its schedule under optimizer)")
    optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="AdamW settings and the lr schedule")
    epochs: float = Field(1.0, gt=0, description="passes over the data (ignored when max_steps is set)")
    max_steps: Optional[int] = Field(None, ge=1, description="optimizer steps to run; overrides epochs")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0 = no clipping)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16 autocast or fp32; auto = bf16 where the GPU/CPU runs it natively")
    grad_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    lora: Optional[LoraConfig] = Field(None, description="LoRA settings; null = full fine-tuning")
    seed: int = Field(0, description="seed for data order and initialisation")
    log_every: int = Field(1, ge=1, description="optimizer steps between metric lines")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: all cores)")
    save_every: Optional[int] = Field(
        None, ge=1, description="optimizer steps between resumable checkpoints; null = only the final model")
    keep_last: int = Field(2, ge=1, description="checkpoints kept (the oldest are deleted)")
    resume: bool = Field(True, description="continue an interrupted run of the same config from its newest checkpoint")
    eval_every: Optional[int] = Field(
        None, ge=1, description="optimizer steps between validation losses on the held-out examples")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp (a model copy per process) or fsdp (FSDP2 fully_shard per "
        "decoder layer; full fine-tuning)")
    loggers: list[Literal["tensorboard", "wandb"]] = Field(
        [], description="extra metric loggers besides metrics.jsonl: tensorboard (out/tensorboard), wandb")
    peak_flops: Optional[float] = Field(
        None, gt=0, description="peak FLOP/s of one process for the MFU estimate; null = measure a matmul")
    compile: bool = Field(False, description="torch.compile the model (slow first steps; mostly worth it on GPU)")

    @model_validator(mode="after")
    def _batch_divides(self):
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})")
        return self


class PretrainConfig(TrainConfig):
    """Knowledge injection: continued causal-LM training on token shards (MedC-K)."""

    data: str = Field("runs/corpus", description="corpus stage output folder (token shards + manifest.json)")
    out: str = Field("runs/pretrain", description="output folder (a Hugging Face model folder plus logs)")
    mode: Literal["packed", "window"] = Field(
        "packed", description="packed: contiguous seq_len chunks across documents; window: one random "
        "seq_len window per document per epoch (PMC-LLaMA v1)")
    weights: Optional[dict[str, float]] = Field(
        None, description="mixing weight per corpus source (default: the weights recorded by the corpus stage)")
    doc_mask: bool = Field(
        False, description="packed mode: attention does not cross the EOS-separated documents of a chunk "
        "(position ids restart at each document)")
    val_sequences: int = Field(
        0, ge=0, description="validation sequences drawn from the mixture with a separate seed and held out of training")

    @field_validator("weights")
    @classmethod
    def _positive(cls, v):
        for name, w in (v or {}).items():
            if not math.isfinite(w) or w <= 0:
                raise ValueError(f"weight of source '{name}' must be > 0, got {w}")
        return v


class FinetuneConfig(TrainConfig):
    """Instruction tuning on chat JSONL, loss on assistant tokens only (MedC-I)."""

    data: str = Field("runs/instructions", description="instructions stage output folder (train.jsonl + manifest.json)")
    out: str = Field("runs/finetune", description="output folder (merged Hugging Face model; adapter/ with LoRA)")
    epochs: float = Field(3.0, gt=0, description="passes over the training records (ignored when max_steps is set)")
    template: Literal["chat", "alpaca"] = Field(
        "chat", description="chat: the model's chat template; alpaca: PMC-LLaMA's Alpaca prompt")
    eval_val: bool = Field(True, description="report loss on the validation split at the end")
    packing: bool = Field(
        False, description="pack several examples into each seq_len sequence (no attention between them); "
        "global_batch and micro_batch then count packed sequences")
