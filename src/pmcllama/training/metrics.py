"""What a training run reports: metrics.jsonl rows, optional TensorBoard / W&B, MFU and memory.

Each row has step, loss, lr, grad_norm, tokens (non-padding, all processes), tokens_per_s,
elapsed_s, tokens_by_source, an MFU estimate and memory; val_loss on evaluation steps.

MFU (model FLOPs utilisation) = 6 * N * tokens/s / peak FLOP/s of all processes, with N the
model's parameters (the forward + backward cost of a dense transformer; attention's own
FLOPs are left out, so it is a slight underestimate at long seq_len). The peak is `peak_flops`
per process when set, else measured once at the start: the best of a few square matmuls of
the training precision on the training device with the training threads.
Memory: peak resident set size of this process (ru_maxrss) and, on CUDA, the peak allocated.
Only rank 0 writes.
"""
from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.inputs import iter_jsonl


_PEAKS: dict = {}


def matmul_peak(device, precision: str, size: int = 1024, seconds: float = 0.2) -> float:
    """Best FLOP/s of `size` x `size` matmuls in the given precision on `device` (measured once
    per process, device, precision and thread count)."""
    import torch

    key = (str(device), precision, torch.get_num_threads())
    if key not in _PEAKS:
        _PEAKS[key] = _measure(device, precision, size, seconds)
    return _PEAKS[key]


def _measure(device, precision: str, size: int, seconds: float) -> float:
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if device.type == "cuda":
        size = max(size, 4096)
    gen = torch.Generator(device=device).manual_seed(0)  # leaves the training RNG streams alone
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    best, t_end = 0.0, time.perf_counter() + seconds
    for i in range(100):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t0))
        if i >= 2 and time.perf_counter() > t_end:
            break
    return best


def memory(device) -> dict:
    """Peak resident memory of this process in MiB, and the CUDA peak allocated."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_peak_mib": round(kib / (1024 if sys.platform != "darwin" else 1024 ** 2), 1)}
    if device.type == "cuda":
        import torch

        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


def check_loggers(loggers: list[str]) -> None:
    """Refuse a logger whose package is missing, before training starts."""
    for name in loggers:
        module = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"loggers: {name} needs the '{module}' package, which is not installed "
                            f"(pip install {module}, or drop it from loggers)")


class Metrics:
    """metrics.jsonl (truncated to `step` on resume) plus the configured loggers; rank 0 only."""

    def __init__(self, out: Path, cfg, step: int, n_params: int, peak: float, active: bool, run_name: str):
        self.n_params, self.peak, self.active = n_params, peak, active
        self.path = out / "metrics.jsonl"
        self.tb = self.wandb = None
        if not active:
            return
        truncate_metrics(self.path, step)
        self.file = open(self.path, "a", encoding="utf-8")
        if "tensorboard" in cfg.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1)
        if "wandb" in cfg.loggers:
            import wandb

            self.wandb = wandb.init(project="pmcllama", name=run_name, dir=str(out),
                                    config=cfg.model_dump(mode="json"), resume="allow")

    def mfu(self, tokens_per_s: float) -> float:
        return 6 * self.n_params * tokens_per_s / self.peak if self.peak else 0.0

    def log(self, row: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        scalars.update({f"tokens_by_source/{k}": v for k, v in row.get("tokens_by_source", {}).items()})
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        if not self.active:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric rows up to `step` (a resumed run re-appends the rest); drop a torn last
    line (a run killed mid-write). Any other bad line is an error naming the file and line."""
    rows = []
    if step > 0 and path.is_file():
        for lineno, row in iter_jsonl(path, "metrics file", torn_tail_ok=True):
            if not isinstance(row, dict):
                raise UserError(f"expected a metrics row (a JSON object), got a {type(row).__name__}", path, lineno)
            if row.get("step", 0) <= step:
                rows.append(json.dumps(row) + "\n")
    path.write_text("".join(rows), encoding="utf-8")
