"""The one training loop, shared by knowledge injection (pretrain) and instruction tuning.

AdamW with warmup + cosine decay, gradient accumulation to a global batch (the loss is
normalised by the label tokens of the whole optimizer step, so accumulation does not change
it), gradient clipping, bf16 autocast where the hardware runs bf16 natively, optional
activation checkpointing and LoRA (PEFT) merged on save; validation loss every `eval_every`
steps; resumable checkpoints every `save_every` steps (training/checkpoint.py). Writes
metrics.jsonl, loss.png and a Hugging Face model folder.
"""
from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from pmcllama.errors import UserError
from pmcllama.training import checkpoint as ckpt
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


@dataclass
class Run:
    """What every optimizer step needs."""

    model: Any
    opt: Any
    sched: Any
    cfg: TrainConfig
    device: Any
    precision: str
    pad_id: int


def setup(model, tokenizer, cfg: TrainConfig, total_steps: int) -> Run:
    import torch

    context = getattr(model.config, "max_position_embeddings", None)
    if context and cfg.seq_len > context:
        raise UserError(f"seq_len {cfg.seq_len} exceeds the model's context length {context}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = default_device()
    precision = resolve_precision(cfg.precision, device)
    model = prepare_model(model, cfg).to(device)
    model.train()
    opt, sched = make_optimizer(model, cfg, total_steps, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Run(model, opt, sched, cfg, device, precision, pad_id)


def train_step(run: Run, examples: Sequence[Example]) -> tuple[float, int, float, float]:
    """One optimizer step over a global batch: (loss, tokens, grad norm, lr used)."""
    import torch

    n_items = max(1, label_tokens(examples))
    loss_sum, step_tokens = 0.0, 0
    for chunk in _micro_batches(examples, run.cfg.micro_batch):
        batch = {k: v.to(run.device) for k, v in collate(chunk, run.pad_id).items()}
        with autocast(run.precision, run.device):
            loss = run.model(**batch, num_items_in_batch=n_items).loss
        loss.backward()
        loss_sum += float(loss.detach())
        step_tokens += int(batch["attention_mask"].sum())
    params = [p for p in run.model.parameters() if p.requires_grad]
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    lr = run.sched.get_last_lr()[0]
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    return loss_sum, step_tokens, float(grad_norm), lr


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric rows up to `step` (a resumed run re-appends the rest); drop a torn last line."""
    rows = []
    if step > 0 and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                rows.append(line + "\n")
    path.write_text("".join(rows), encoding="utf-8")


def resume_or_start(run: Run, steps, out: Path, ident: dict) -> ckpt.TrainProgress:
    """The counters of the newest checkpoint of this run (restoring everything), or fresh ones."""
    root = out / ckpt.CHECKPOINTS
    found = ckpt.latest(root) if run.cfg.resume else None
    if found is None:
        shutil.rmtree(root, ignore_errors=True)
        return ckpt.TrainProgress()
    prog = ckpt.load(found, run.model, run.opt, run.sched, steps, ident)
    print(f"[{stage_name(out)}] resuming from {found} (step {prog.step})")
    return prog


def train(model, tokenizer, cfg: TrainConfig, steps: Iterator[list[Example]], total_steps: int,
          out: Path, val: Sequence[Example] | None = None, inputs: dict | None = None) -> dict:
    """Run `total_steps` optimizer steps; each item of `steps` is one global batch of examples.

    With `save_every`, checkpoints go to `out/checkpoints/` (`steps` should then have
    `state_dict()`/`load_state_dict()`, like `Batches`); with `resume`, the newest one of the
    same config and `inputs` is continued exactly.
    """
    from pmcllama.progress import progress

    if cfg.save_every and not hasattr(steps, "state_dict"):
        raise TypeError("save_every needs a batch stream whose position can be saved (training.data.Batches)")
    run = setup(model, tokenizer, cfg, total_steps)
    ident = ckpt.identity(cfg, inputs or {}, total_steps)
    prog = resume_or_start(run, steps, out, ident)
    resumed_from = prog.step
    metrics_path = out / "metrics.jsonl"
    truncate_metrics(metrics_path, prog.step)
    t_start = time.perf_counter() - prog.elapsed_s
    bar = progress(total=total_steps, initial=prog.step, unit="step", desc=stage_name(out))
    with open(metrics_path, "a", encoding="utf-8") as log:
        for step in range(prog.step + 1, total_steps + 1):
            t0 = time.perf_counter()
            examples = next(steps)
            loss_sum, step_tokens, grad_norm, lr = train_step(run, examples)
            if not math.isfinite(loss_sum):
                raise RuntimeError(f"loss became {loss_sum} at step {step}; lower lr or use fp32")
            prog.advance(step, step_tokens, examples)
            dt = time.perf_counter() - t0
            prog.elapsed_s = time.perf_counter() - t_start
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / dt:.0f}", refresh=False)
            bar.update(1)
            evaluate_now = bool(cfg.eval_every and val and step % cfg.eval_every == 0)
            if step % cfg.log_every == 0 or step == total_steps or evaluate_now:
                row = {"step": step, "loss": round(loss_sum, 5), "lr": lr, "grad_norm": round(grad_norm, 5),
                       "tokens": prog.tokens, "tokens_per_s": round(step_tokens / dt, 1),
                       "elapsed_s": round(prog.elapsed_s, 2), "tokens_by_source": dict(prog.tokens_by_source)}
                if evaluate_now:
                    val_loss = evaluate_loss(run.model, val, cfg, run.pad_id, run.device, run.precision)
                    row["val_loss"] = round(val_loss, 5)
                log.write(json.dumps(row) + "\n")
                log.flush()
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                ckpt.save(out / ckpt.CHECKPOINTS, run.model, run.opt, run.sched, steps, prog, ident, cfg.keep_last)
            ckpt.kill_hook(step)
    bar.close()
    summary = finish(run, tokenizer, val, out, prog)
    return {**summary, "resumed_from_step": resumed_from} if resumed_from else summary


def finish(run: Run, tokenizer, val, out: Path, prog: ckpt.TrainProgress) -> dict:
    """Final validation, the Hugging Face folder, the loss plot; checkpoints are then removed."""
    wall = prog.elapsed_s
    summary = {"steps": prog.step, "tokens": prog.tokens, "train_wall_s": round(wall, 2),
               "tokens_per_s": round(prog.tokens / max(wall, 1e-9), 1), "precision": run.precision,
               "device": run.device.type, "tokens_by_source": prog.tokens_by_source}
    if val:
        summary["val_loss"] = round(evaluate_loss(run.model, val, run.cfg, run.pad_id, run.device, run.precision), 5)
    save_trained(run.model, tokenizer, run.cfg, out)
    from pmcllama.plots import plot_losses

    plot_losses({stage_name(out): out / "metrics.jsonl"}, out / "loss.png", title=f"{stage_name(out)}: training loss")
    shutil.rmtree(out / ckpt.CHECKPOINTS, ignore_errors=True)
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
