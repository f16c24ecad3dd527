"""The contract between stages: one output folder per stage, with `manifest.json`.

A stage writes into `<out>.partial/`, then renames it to `<out>` once everything is in
place, so a folder without a complete manifest never looks finished; a resumable stage
(training) keeps an interrupted run's `<out>.partial/` to continue from its checkpoints.
The manifest holds the resolved config, package version and git revision, inputs (size and
sha256), counts and wall time. Its `fingerprint` (config + inputs + version) makes a rerun with identical
inputs and config a no-op; `force=True` redoes it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from pmcllama import __version__
from pmcllama.config import dump_yaml
from pmcllama.errors import UserError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_input(path: str | Path) -> dict:
    """Size and sha256 of an input. A stage output folder is identified by its manifest."""
    p = Path(path)
    if not p.exists():
        raise UserError("input not found", p)
    if p.is_file():
        return {"path": str(p), "size": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = p / MANIFEST
    if manifest.is_file():
        return {"path": str(p), "manifest_sha256": sha256_file(manifest)}
    h = hashlib.sha256()
    size = 0
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(f).encode())
        size += f.stat().st_size
    return {"path": str(p), "size": size, "sha256": h.hexdigest()}


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"no {MANIFEST}: not a finished pmcllama stage output", Path(folder))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"corrupt manifest: {e.msg}", path, e.lineno) from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class StageResult:
    """What a stage function returns: counts and any extra manifest fields."""

    counts: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def run_stage(
    name: str,
    cfg: BaseModel,
    out: str | Path,
    inputs: list[str | Path],
    work: Callable[[Path], StageResult],
    force: bool = False,
    log: Callable[[str], None] = print,
    resumable: bool = False,
) -> Path:
    """Run `work(tmp_folder)` unless `out` is already current; publish atomically.

    `<out>.partial/` is wiped first, unless the stage is `resumable` (and not `force`d): then
    the work of an interrupted run is left there for `work` to continue.
    """
    out = Path(out)
    described = [describe_input(p) for p in inputs]
    config = cfg.model_dump(mode="json")
    fingerprint = hashlib.sha256(
        json.dumps({"stage": name, "config": config, "inputs": described, "version": __version__},
                   sort_keys=True, default=str).encode()
    ).hexdigest()
    if not force and (out / MANIFEST).is_file():
        try:
            old = read_manifest(out)
        except UserError:
            old = {}
        if old.get("fingerprint") == fingerprint:
            log(f"[{name}] {out} is up to date (same config and inputs); skipping. Use --force to redo.")
            return out
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists() and (force or not resumable):
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    result = work(tmp)
    wall = time.perf_counter() - t0
    (tmp / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    manifest = {
        "stage": name,
        "pmcllama_version": __version__,
        "git_revision": git_revision(),
        "created": started.isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "config": config,
        "inputs": described,
        "counts": result.counts,
        "timings": {"wall_s": round(wall, 3)},
        **result.info,
    }
    write_json(tmp / MANIFEST, manifest)
    if out.exists():
        old_dir = out.with_name(out.name + ".old")
        if old_dir.exists():
            shutil.rmtree(old_dir)
        os.replace(out, old_dir)
        os.replace(tmp, out)
        shutil.rmtree(old_dir)
    else:
        os.replace(tmp, out)
    log(f"[{name}] wrote {out} in {wall:.1f}s")
    return out
