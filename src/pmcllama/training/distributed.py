"""Data-parallel training under torchrun: DDP or FSDP2 (`fully_shard`), gloo on CPU, NCCL on GPU.

The same command runs on one process or under `torchrun --nproc_per_node N` (and across nodes
with a rendezvous endpoint). Every rank draws the same global batch from the same seeded
stream (so the data position is one small state, identical on every rank, and a run can
resume on another number of processes) and trains on its own contiguous slice of it; the
loss of each micro-batch is normalised by the label tokens of the whole global batch and
multiplied by the world size, which the gradient averaging of DDP/FSDP divides out again: the
update equals the single-process one at the same global batch (up to float summation order).
Rank 0 alone writes checkpoints, metrics and the final model; gathering the full model and
optimizer state for it is collective (torch.distributed.checkpoint.state_dict), as is
reading it back (every rank reads the checkpoint files: multi-node runs need a shared disk).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pmcllama.errors import UserError
from pmcllama.stage import run_stage as stage_run


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init() -> Dist:
    """Join the process group torchrun describes in the environment (once); a plain run is rank 0 of 1."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def say(message: str) -> None:
    """Print on rank 0 only."""
    if init().main:
        print(message)


def device(d: Dist):
    import torch

    return torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _layer_classes(model) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "_no_split_modules", None) or [])


def wrap(model, mode: str, d: Dist, dev):
    """DDP, or FSDP2 with one shard group per decoder layer plus the root."""
    if not d.active:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    classes = _layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    if not layers:
        raise UserError(f"fsdp: found no decoder layers to shard in {type(model).__name__}; use distributed: ddp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def grad_sync(model, d: Dist, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if not d.active or enabled:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    model.set_requires_gradient_sync(False)  # FSDP2; turned back on before the last micro-batch
    return contextlib.nullcontext()


def enable_sync(model, d: Dist) -> None:
    if d.active and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(True)


def all_sum(value: float, d: Dist, dev) -> float:
    if not d.active:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return float(t[0])


def local_tensor(x):
    """A plain tensor from a DTensor (FSDP's grad norm), else `x`."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def shard(examples: list, d: Dist) -> list:
    """This rank's contiguous slice of the global batch."""
    n = len(examples) // d.world
    return examples[d.rank * n:(d.rank + 1) * n]


def gather_objects(obj: Any, d: Dist) -> list:
    if not d.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_state(model, trainable: set[str]) -> dict:
    """Full (unsharded) trainable parameters on CPU; collective; complete on rank 0."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))
    return {k: v.contiguous() for k, v in sd.items() if k in trainable}


def optimizer_state(model, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=_options(cpu_offload=True))


def load_model_state(model, sd: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, sd, options=_options(strict=False))


def load_optimizer_state(model, opt, sd: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, sd, options=_options())


def run_stage(name: str, cfg, out, inputs: list, work: Callable[[Path], Any], force: bool, resumable: bool) -> Path:
    """`stage.run_stage` on rank 0; the other ranks do the same `work` (collectives, no writes)
    when rank 0 does, and nothing when its output is already current."""
    d = init()
    if not d.active:
        return stage_run(name, cfg, out, inputs, work, force=force, resumable=resumable)
    import torch.distributed as dist

    if d.main:
        told = []

        def lead(tmp: Path):
            told.append(True)
            dist.broadcast_object_list([("work", str(tmp))], src=0)
            return work(tmp)

        try:
            result = stage_run(name, cfg, out, inputs, lead, force=force, resumable=resumable)
        except UserError as e:
            if not told:
                dist.broadcast_object_list([("error", str(e))], src=0)
            raise
        if not told:
            dist.broadcast_object_list([("skip", str(result))], src=0)
        return result
    msg = [None]
    dist.broadcast_object_list(msg, src=0)
    kind, arg = msg[0]
    if kind == "error":
        raise UserError(f"rank 0 stopped: {arg}")
    if kind == "work":
        work(Path(arg))
    return Path(out)
