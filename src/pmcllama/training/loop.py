"""The one training loop, shared by knowledge injection (pretrain) and instruction tuning.

AdamW (fused, on CPU and CUDA) with warmup + cosine, linear or no decay (`optimizer:`), gradient accumulation to a global
batch (the loss is normalised by the label tokens of the whole optimizer step, so accumulation
does not change it), gradient clipping, bf16 autocast where the hardware runs bf16 natively,
optional activation checkpointing, torch.compile and the LoRA transform (models.attach_lora,
merged on save by models.merge_lora); DDP/FSDP2 under torchrun (training/distributed.py);
validation loss every `eval_every` steps; resumable checkpoints every `save_every` steps
(training/checkpoint.py). Writes metrics.jsonl (and TensorBoard/W&B, training/metrics.py),
loss.png and a Hugging Face model folder.
"""
from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from pmcllama.errors import UserError
from pmcllama.models import attach_lora, merge_lora, save_model
from pmcllama.plots import plot_losses
from pmcllama.progress import progress
from pmcllama.training import checkpoint as ckpt
from pmcllama.training import distributed, varlen
from pmcllama.training.distributed import Dist
from pmcllama.training.config import OptimizerConfig, TrainConfig
from pmcllama.training.data import collate, label_tokens
from pmcllama.training.example import Example
from pmcllama.training.metrics import Metrics, check_loggers, matmul_peak, memory


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


def autocast(precision: str, device):
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_lambda(opt: OptimizerConfig, total: int):
    """The lr of each step as a fraction of the peak: warmup, then `opt.decay` to `opt.min_lr_ratio`."""
    warmup, floor = opt.warmup_steps, opt.min_lr_ratio
    shape = {"cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)), "linear": lambda t: 1 - t,
             "constant": lambda t: 1.0}[opt.decay]

    def f(step: int) -> float:  # step is 0-based: the lr used for optimizer step `step + 1`
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * shape(progress)
    return f


def prepare_model(model, cfg: TrainConfig):
    """Apply activation checkpointing and the LoRA transform (models.attach_lora) as configured."""
    if cfg.grad_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # non-reentrant: safe under DDP
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        model = attach_lora(model, cfg.lora, input_grads=cfg.grad_checkpointing)
    return model


def make_optimizer(model, cfg: TrainConfig, total_steps: int, device):
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    o = cfg.optimizer
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step instead of ~10 per parameter; on CPU (torch >= 2.4) it is tens of
    # times faster than the default per-tensor loop, which dominates a small model's step there
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(o.betas), eps=o.eps, fused=device.type in ("cuda", "cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, total_steps))
    return opt, sched


def _micro_batches(examples: Sequence[Example], size: int):
    for i in range(0, len(examples), size):
        yield examples[i:i + size]


def batch_loss(run: "Run", chunk: Sequence[Example], n_items: int):
    """The loss of a micro-batch over `n_items` label tokens: flattened without padding
    (training/varlen.py) or right-padded (models that keep their own attention)."""
    if run.flat:
        return varlen.loss(run.model, chunk, n_items, run.device)
    batch = {k: v.to(run.device) for k, v in collate(chunk, run.pad_id).items()}
    return run.model(**batch, num_items_in_batch=n_items, use_cache=False).loss


def evaluate_loss(run: "Run", examples: Sequence[Example]) -> float:
    """Mean loss per label token over `examples`."""
    import torch

    run.model.eval()
    total, count = 0.0, max(1, label_tokens(examples))
    with torch.no_grad():
        for chunk in _micro_batches(examples, run.cfg.micro_batch):
            with autocast(run.precision, run.device):
                total += float(batch_loss(run, chunk, count))
    run.model.train()
    return total


@dataclass
class Run:
    """What every optimizer step needs."""

    model: Any  # what forward/backward run through: DDP-wrapped or FSDP-sharded under torchrun
    opt: Any
    sched: Any
    cfg: TrainConfig
    device: Any
    precision: str
    pad_id: int
    dist: Dist
    raw: Any  # the model itself (without the DDP wrapper)
    trainable: set[str]  # names of the trained parameters
    attn_before: str | None = None  # the model's own attention, restored on save; None: varlen not used

    @property
    def flat(self) -> bool:
        """Micro-batches flattened without padding (training/varlen.py)."""
        return self.attn_before is not None


def check_batch(cfg: TrainConfig, d: Dist) -> None:
    if cfg.global_batch % (cfg.micro_batch * d.world):
        raise UserError(f"global_batch {cfg.global_batch} is not a multiple of micro_batch {cfg.micro_batch} x "
                        f"{d.world} processes; change global_batch or micro_batch")
    if d.active and cfg.distributed == "fsdp" and cfg.lora is not None:
        raise UserError("distributed: fsdp shards a full fine-tune; with LoRA (a small trained part) use "
                        "distributed: ddp")


def setup(model, tokenizer, cfg: TrainConfig, total_steps: int) -> Run:
    import torch

    context = getattr(model.config, "max_position_embeddings", None)
    if context and cfg.seq_len > context:
        raise UserError(f"seq_len {cfg.seq_len} exceeds the model's context length {context}")
    d = distributed.init()
    check_batch(cfg, d)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = distributed.device(d)
    precision = resolve_precision(cfg.precision, device)
    attn_before = varlen.enable(model, cfg.seq_len)
    raw = prepare_model(model, cfg).to(device)
    raw.train()
    trainable = {n for n, p in raw.named_parameters() if p.requires_grad}
    if cfg.compile:
        raw.compile()  # in place: parameter names, state dicts and saving stay as they are
    wrapped = distributed.wrap(raw, cfg.distributed, d, device)
    opt, sched = make_optimizer(wrapped, cfg, total_steps, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Run(wrapped, opt, sched, cfg, device, precision, pad_id, d, raw, trainable, attn_before)


def train_step(run: Run, examples: Sequence[Example]) -> tuple[float, int, float, float]:
    """One optimizer step over a global batch: (loss, tokens, grad norm, lr used).

    Under torchrun each rank takes its slice of the batch; losses are normalised by the label
    tokens of the whole batch and scaled by the world size, which gradient averaging undoes."""
    import torch

    d = run.dist
    n_items = max(1, label_tokens(examples))
    chunks = list(_micro_batches(distributed.shard(list(examples), d), run.cfg.micro_batch))
    loss_sum = 0.0
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        if last:
            distributed.enable_sync(run.model, d)
        with distributed.grad_sync(run.model, d, last):
            with autocast(run.precision, run.device):
                loss = batch_loss(run, chunk, n_items)
            (loss * d.world if d.active else loss).backward()
        loss_sum += float(loss.detach())
    loss_sum = distributed.all_sum(loss_sum, d, run.device)
    params = [p for p in run.model.parameters() if p.requires_grad]
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    grad_norm = distributed.local_tensor(torch.nn.utils.clip_grad_norm_(params, clip))
    lr = run.sched.get_last_lr()[0]
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    return loss_sum, sum(len(e.input_ids) for e in examples), float(grad_norm), lr


def resume_or_start(run: Run, steps, out: Path, ident: dict) -> ckpt.TrainProgress:
    """The counters of the newest checkpoint of this run (restoring everything), or fresh ones."""
    root = out / ckpt.CHECKPOINTS
    found = ckpt.latest(root) if run.cfg.resume else None
    if found is None:
        distributed.barrier(run.dist)  # no rank may still be looking at old checkpoints
        if run.dist.main:
            shutil.rmtree(root, ignore_errors=True)
        return ckpt.TrainProgress()
    prog = ckpt.load(found, run.model, run.opt, run.sched, steps, ident, run.trainable, run.dist)
    if run.dist.main:
        print(f"[{stage_name(out)}] resuming from {found} (step {prog.step})")
    return prog


def open_metrics(run: Run, out: Path, step: int) -> Metrics:
    peak = run.cfg.peak_flops or matmul_peak(run.device, run.precision)
    n_params = sum(p.numel() for p in run.raw.parameters())
    return Metrics(out, run.cfg, step, n_params, peak * run.dist.world, run.dist.main, stage_name(out))


def train(model, tokenizer, cfg: TrainConfig, steps: Iterator[list[Example]], total_steps: int,
          out: Path, val: Sequence[Example] | None = None, inputs: dict | None = None) -> dict:
    """Run `total_steps` optimizer steps; each item of `steps` is one global batch of examples.

    With `save_every`, checkpoints go to `out/checkpoints/` (`steps` should then have
    `state_dict()`/`load_state_dict()`, like `Batches`); with `resume`, the newest one of the
    same config and `inputs` is continued exactly. Under torchrun every rank calls this.
    """
    if cfg.save_every and not hasattr(steps, "state_dict"):
        raise TypeError("save_every needs a batch stream whose position can be saved (training.data.Batches)")
    check_loggers(cfg.loggers)
    run = setup(model, tokenizer, cfg, total_steps)
    ident = ckpt.identity(cfg, inputs or {}, total_steps)
    prog = resume_or_start(run, steps, out, ident)
    resumed_from = prog.step
    metrics = open_metrics(run, out, prog.step)
    t_start = time.perf_counter() - prog.elapsed_s
    bar = progress(total=total_steps, initial=prog.step, unit="step", desc=stage_name(out), disable=not run.dist.main)
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
                   "elapsed_s": round(prog.elapsed_s, 2), "tokens_by_source": dict(prog.tokens_by_source),
                   "mfu": round(metrics.mfu(step_tokens / dt), 5), **memory(run.device)}
            if evaluate_now:
                row["val_loss"] = round(evaluate_loss(run, val), 5)
            metrics.log(row)
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            ckpt.save(out / ckpt.CHECKPOINTS, run.model, run.opt, run.sched, steps, prog, ident, cfg.keep_last,
                      run.trainable, run.dist)
    bar.close()
    metrics.close()
    summary = finish(run, tokenizer, val, out, prog)
    return {**summary, "resumed_from_step": resumed_from} if resumed_from else summary


def finish(run: Run, tokenizer, val, out: Path, prog: ckpt.TrainProgress) -> dict:
    """Final validation, the Hugging Face folder, the loss plot; checkpoints are then removed."""
    wall = prog.elapsed_s
    summary = {"steps": prog.step, "tokens": prog.tokens, "train_wall_s": round(wall, 2),
               "tokens_per_s": round(prog.tokens / max(wall, 1e-9), 1), "precision": run.precision,
               "device": run.device.type, "processes": run.dist.world, "tokens_by_source": prog.tokens_by_source,
               **memory(run.device)}
    if val:
        summary["val_loss"] = round(evaluate_loss(run, val), 5)
    if run.flat:  # the saved config names the model's own attention
        varlen.disable(run.raw, run.attn_before)
    if run.dist.active and run.cfg.distributed == "fsdp":
        save_sharded(run, tokenizer, out)
    elif run.dist.main:
        save_trained(run.raw, tokenizer, run.cfg, out)
    if run.dist.main:
        plot_losses({stage_name(out): out / "metrics.jsonl"}, out / "loss.png",
                    title=f"{stage_name(out)}: training loss")
        shutil.rmtree(out / ckpt.CHECKPOINTS, ignore_errors=True)
    distributed.barrier(run.dist)
    return summary


def save_sharded(run: Run, tokenizer, out: Path) -> None:
    """FSDP: gather the full weights (collective) and write the Hugging Face folder from rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(run.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if run.dist.main:
        if run.cfg.grad_checkpointing:
            checkpointing_off(run.raw)
            run.raw.config.use_cache = True
        run.raw.save_pretrained(str(out), state_dict=full, safe_serialization=True)
        tokenizer.save_pretrained(str(out))


def checkpointing_off(model) -> None:
    off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    off()


def save_trained(model, tokenizer, cfg: TrainConfig, out: Path) -> None:
    """Save a Hugging Face folder; with LoRA the merged model and the adapter (adapter/)."""
    model = model.to("cpu")
    if cfg.lora is not None:
        model = merge_lora(model, out / "adapter")
    if cfg.grad_checkpointing:
        checkpointing_off(model)
        model.config.use_cache = True
    save_model(model, tokenizer, out)
