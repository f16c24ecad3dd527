"""Resumable training checkpoints under `<out>.partial/checkpoints/step-XXXXXX/`.

A checkpoint is written into `step-XXXXXX.tmp/` and renamed into place, so a run killed
at any moment leaves only complete checkpoints. It holds

    model.safetensors   the trainable parameters (all of them; only the adapter with LoRA), full
                        (unsharded) under FSDP, keyed by parameter name
    optimizer.pt        optimizer state dict, full and keyed by parameter name
                        (torch.distributed.checkpoint.state_dict; torch.load(weights_only=True))
    scheduler.pt        lr scheduler state dict   (torch.load(weights_only=True))
    rng.pt              torch CPU (and CUDA) RNG states, one per rank
    state.json          step, tokens seen (per source), data position (sampler RNG state,
                        epochs, cursors), python and numpy RNG states per rank, the run's identity
                        (training config + inputs) and its fingerprint, file sizes

A run resumes only from a checkpoint of the same identity; the fields in `RUN_ONLY` (where
to write, how often to log/save/evaluate, threads) may change between the two. On CPU with
the same thread count the resumed run is bitwise identical to an uninterrupted one
(tests/test_resume.py); another thread count changes the float summation order.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pmcllama.errors import UserError
from pmcllama.stage import MANIFEST, describe_input, write_json
from pmcllama.training import distributed
from pmcllama.training.distributed import Dist

CHECKPOINTS = "checkpoints"
STATE = "state.json"
FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")
RUN_ONLY = frozenset({"out", "resume", "save_every", "keep_last", "log_every", "eval_every", "threads",
                      "distributed", "loggers", "peak_flops"})
_NAME = re.compile(r"^step-(\d{6,})$")


@dataclass
class TrainProgress:
    """Counters that continue across a resume."""

    step: int = 0
    tokens: int = 0
    tokens_by_source: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def advance(self, step: int, tokens: int, examples) -> None:
        """Count one finished optimizer step: its (non-padding) tokens, and tokens per source."""
        self.step, self.tokens = step, self.tokens + tokens
        for e in examples:
            for src, n in e.tokens_by_source().items():
                self.tokens_by_source[src] = self.tokens_by_source.get(src, 0) + n


def identity(cfg, inputs: dict, total_steps: int) -> dict:
    """What must match for a checkpoint to continue this run."""
    config = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RUN_ONLY}
    return {"config": config, "inputs": inputs, "total_steps": total_steps}


def fingerprint(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested config sections as dotted keys: {"optimizer": {"eps": 1e-8}} -> {"optimizer.eps": 1e-8}."""
    out = {}
    for k, v in config.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
    return out


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable list of what differs between two identities."""
    out = []
    for part in ("config", "inputs"):
        a, b = old.get(part) or {}, new.get(part) or {}
        if part == "config":
            a, b = _flat(a), _flat(b)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" if part == "config" else f"input '{k}' changed")
    if not out and old.get("total_steps") != new.get("total_steps"):
        out.append(f"total steps: {old.get('total_steps')} -> {new.get('total_steps')}")
    return out or ["fingerprint"]


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def _rng_states() -> tuple[dict, dict]:
    import torch

    torch_state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        torch_state["cuda"] = torch.cuda.get_rng_state_all()
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return torch_state, {"python": [py[0], list(py[1]), py[2]],
                         "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}


def _set_rng_states(torch_state: dict, other: dict) -> None:
    import torch

    torch.set_rng_state(torch_state["cpu"])
    if "cuda" in torch_state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(torch_state["cuda"])
    version, keys, gauss = other["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = other["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save(root: Path, model, opt, sched, data, prog: TrainProgress, ident: dict, keep_last: int,
         trainable: set[str], d: Dist = Dist()) -> Path | None:
    """Write checkpoint `step-XXXXXX` atomically and keep only the newest `keep_last`.

    Collective under torchrun (every rank calls it): the full trainable weights and optimizer
    state are gathered and every rank's RNG states collected; rank 0 writes them."""
    import torch
    from safetensors.torch import save_file

    weights = distributed.model_state(model, trainable)
    optim = distributed.optimizer_state(model, opt)
    rngs = distributed.gather_objects(_rng_states(), d)
    final = root / f"step-{prog.step:06d}"
    if d.main:
        tmp = root / f"{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(optim, tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        torch.save({"ranks": [r[0] for r in rngs]}, tmp / "rng.pt")
        state = {"step": prog.step, "tokens": prog.tokens, "tokens_by_source": prog.tokens_by_source,
                 "elapsed_s": prog.elapsed_s, "data": data.state_dict() if hasattr(data, "state_dict") else None,
                 "rng": [r[1] for r in rngs], "identity": ident, "fingerprint": fingerprint(ident),
                 "files": {f: (tmp / f).stat().st_size for f in FILES}}
        write_json(tmp / STATE, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(root, keep_last)
    distributed.barrier(d)
    return final


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, and leftovers of interrupted saves."""
    for old in checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
    for tmp in root.glob("step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def _read_state(folder: Path, ident: dict) -> dict:
    path = folder / STATE
    if not path.is_file():
        raise UserError("checkpoint has no state.json; delete this folder to resume from an earlier "
                        "checkpoint, or use --force to start over", folder)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt checkpoint state: {e}", path) from None
    if state.get("fingerprint") != fingerprint(ident):
        what = "; ".join(differences(state.get("identity") or {}, ident))
        raise UserError(f"checkpoint is from another training config or input ({what}); use --force "
                        "(or resume=false) to start over", folder)
    for name, size in (state.get("files") or {}).items():
        p = folder / name
        if not p.is_file():
            raise UserError("checkpoint file missing; use --force to start over", p)
        if p.stat().st_size != size:
            raise UserError(f"checkpoint file is truncated or corrupt ({p.stat().st_size} bytes, "
                            f"expected {size}); use --force to start over", p)
    return state


def _load_file(path: Path, loader):
    try:
        return loader(path)
    except Exception as e:  # safetensors, pickle and zip errors have many types
        text = str(e)
        if "weights_only" in text or "Unpickl" in type(e).__name__:  # never pass on torch's advice
            why = "it holds pickled objects other than tensors and plain data, which are never loaded"
        else:
            why = f"{type(e).__name__}: {text.splitlines()[0] if text else 'unreadable'}"
        raise UserError(f"cannot read checkpoint file ({why}); use --force to start over", path) from None


def load(folder: Path, model, opt, sched, data, ident: dict, trainable: set[str], d: Dist = Dist()) -> TrainProgress:
    """Restore model, optimizer, scheduler, data position and this rank's RNG states; return the counters."""
    import torch
    from safetensors.torch import load_file

    state = _read_state(folder, ident)
    weights = _load_file(folder / "model.safetensors", lambda p: load_file(str(p)))
    if set(weights) != trainable:
        raise UserError("checkpoint weights do not match the model's trainable parameters", folder)

    def tload(p):
        return torch.load(p, map_location="cpu", weights_only=True)

    optim = _load_file(folder / "optimizer.pt", tload)
    sched_state = _load_file(folder / "scheduler.pt", tload)
    rngs = _load_file(folder / "rng.pt", tload)
    others = state.get("rng")
    if not isinstance(rngs, dict) or not isinstance(others, list) or len(rngs.get("ranks", [])) != len(others):
        raise UserError("checkpoint was written by an older pmcllama (RNG state layout); use --force to start over",
                        folder)
    distributed.load_model_state(model, weights)
    distributed.load_optimizer_state(model, opt, optim)
    sched.load_state_dict(sched_state)
    if state.get("data") is not None and hasattr(data, "load_state_dict"):
        try:
            data.load_state_dict(state["data"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot restore the data position: {e}", folder / STATE) from None
    k = d.rank % len(others)  # another world size: exact data position, RNG streams reused by rank
    _set_rng_states(rngs["ranks"][k], others[k])
    return TrainProgress(step=int(state["step"]), tokens=int(state["tokens"]),
                         tokens_by_source=dict(state["tokens_by_source"]), elapsed_s=float(state["elapsed_s"]))


def inputs_identity(data: str | Path, model_dir: str | Path) -> dict:
    """Cheap identity of a training run's inputs: stage outputs by their manifest, a model
    folder without one by its file names and sizes."""
    model_dir = Path(model_dir)
    if (model_dir / MANIFEST).is_file():
        model = describe_input(model_dir)
    else:
        model = {"path": str(model_dir),
                 "files": {p.name: p.stat().st_size for p in sorted(model_dir.iterdir()) if p.is_file()}}
    return {"data": describe_input(data), "model": model}
