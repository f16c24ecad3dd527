"""The one training loop, shared by knowledge injection (pretrain) and instruction tuning.

AdamW with warmup + cosine decay, gradient accumulation to a global batch (the loss is
normalised by the label tokens of the whole optimizer step, so accumulation does not change
it), gradient clipping, bf16 autocast where the hardware runs bf16 natively, optional
activation checkpointing and LoRA (PEFT) merged on save. Writes metrics.jsonl, loss.png and a
Hugging Face model folder.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

from pmcllama.training.config import TrainConfig
from pmcllama.training.data import Example, collate, label_tokens


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AMX or AVX-512 BF16: without them bf16 matmuls are ~100x slower."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def resolve_precision(precision: str, device) -> str:
    import torch

    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("precision=bf16 on a CPU without AMX/AVX-512-BF16: expect it to be far slower than fp32")
    return precision


def stage_name(out: Path) -> str:
    return out.name.removesuffix(".partial")


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(precision: str, device):
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:  # step is 0-based: the lr used for optimizer step `step + 1`
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def prepare_model(model, cfg: TrainConfig):
    """Apply LoRA and activation checkpointing as configured."""
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        if cfg.grad_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.targets), task_type="CAUSAL_LM"))
    return model


def make_optimizer(model, cfg: TrainConfig, total_steps: int, device):
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
    return opt, sched


def _micro_batches(examples: Sequence[Example], size: int):
    for i in range(0, len(examples), size):
        yield examples[i:i + size]


def evaluate_loss(model, examples: Sequence[Example], cfg: TrainConfig, pad_id: int, device, precision: str) -> float:
    """Mean loss per label token over `examples`."""
    import torch

    model.eval()
    total, count = 0.0, label_tokens(examples)
    with torch.no_grad():
        for chunk in _micro_batches(examples, cfg.micro_batch):
            batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
            with autocast(precision, device):
                out = model(**batch, num_items_in_batch=count)
            total += float(out.loss)
    model.train()
    return total


def train(model, tokenizer, cfg: TrainConfig, steps: Iterator[list[Example]], total_steps: int,
          out: Path, val: Sequence[Example] | None = None) -> dict:
    """Run `total_steps` optimizer steps; each item of `steps` is one global batch of examples."""
    import torch

    from pmcllama.progress import progress

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = default_device()
    precision = resolve_precision(cfg.precision, device)
    model = prepare_model(model, cfg).to(device)
    model.train()
    opt, sched = make_optimizer(model, cfg, total_steps, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seen: dict[str, int] = {}
    tokens_total, t_start = 0, time.perf_counter()
    metrics_path = out / "metrics.jsonl"
    bar = progress(total=total_steps, unit="step", desc=stage_name(out))
    with open(metrics_path, "w", encoding="utf-8") as log:
        for step in range(1, total_steps + 1):
            t0 = time.perf_counter()
            examples = next(steps)
            n_items = max(1, label_tokens(examples))
            loss_sum, step_tokens = 0.0, 0
            for chunk in _micro_batches(examples, cfg.micro_batch):
                batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
                with autocast(precision, device):
                    loss = model(**batch, num_items_in_batch=n_items).loss
                loss.backward()
                loss_sum += float(loss.detach())
                step_tokens += int(batch["attention_mask"].sum())
            for e in examples:
                seen[e.source or "all"] = seen.get(e.source or "all", 0) + len(e.input_ids)
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens_total += step_tokens
            dt = time.perf_counter() - t0
            if not math.isfinite(loss_sum):
                raise RuntimeError(f"loss became {loss_sum} at step {step}; lower lr or use fp32")
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / dt:.0f}", refresh=False)
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                log.write(json.dumps({
                    "step": step, "loss": round(loss_sum, 5), "lr": lr, "grad_norm": round(float(grad_norm), 5),
                    "tokens": tokens_total, "tokens_per_s": round(step_tokens / dt, 1),
                    "elapsed_s": round(time.perf_counter() - t_start, 2), "tokens_by_source": dict(seen),
                }) + "\n")
                log.flush()
    bar.close()
    wall = time.perf_counter() - t_start
    summary = {"steps": total_steps, "tokens": tokens_total, "train_wall_s": round(wall, 2),
               "tokens_per_s": round(tokens_total / wall, 1), "precision": precision, "device": device.type,
               "tokens_by_source": seen}
    if val:
        summary["val_loss"] = round(evaluate_loss(model, val, cfg, pad_id, device, precision), 5)
    save_trained(model, tokenizer, cfg, out)
    from pmcllama.plots import plot_losses

    plot_losses({stage_name(out): metrics_path}, out / "loss.png", title=f"{stage_name(out)}: training loss")
    return summary


def save_trained(model, tokenizer, cfg: TrainConfig, out: Path) -> None:
    """Save a Hugging Face folder; with LoRA also the adapter (adapter/) and the merged model."""
    from pmcllama.models import save_model

    model = model.to("cpu")
    if cfg.lora is not None:
        model.save_pretrained(str(out / "adapter"))
        model = model.merge_and_unload()
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    save_model(model, tokenizer, out)
