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
from pmcllama.inputs import read_json

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
    return read_json(path, MANIFEST)


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


PARTIAL_MARK = ".pmcllama-partial"
OWN_FILES = (MANIFEST, "config.yaml")


def output_folder(out: str | Path) -> Path:
    """`out` normalised (`a/b/..` is `a`, `.` is the current folder), so names derived from it
    (`<out>.partial`) sit beside it."""
    return Path(os.path.abspath(out))


def own_manifest(folder: Path) -> dict | None:
    """The manifest of a folder pmcllama wrote (stage, fingerprint, version), else None."""
    try:
        data = read_manifest(folder)
    except (UserError, OSError):
        return None
    if isinstance(data, dict) and {"stage", "fingerprint", "pmcllama_version"} <= data.keys():
        return data
    return None


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def check_output(out: Path, shown: str | Path, force: bool) -> dict | None:
    """Refuse an `out` pmcllama must not replace; return its own manifest when it has one.

    A missing or empty folder is free; a folder with pmcllama's manifest is ours; anything
    else (a file, a folder of the user's) is refused, and with `force` a user's folder gets
    the outputs added beside its files (none of them removed or overwritten)."""
    if out.exists() and not out.is_dir():
        raise UserError("out= is an existing file, not a folder; pmcllama never overwrites a file "
                        "it did not write: choose another out=", shown)
    if not out.is_dir():
        return None
    old = own_manifest(out)
    if old is None and any(out.iterdir()) and not force:
        raise UserError("out= is an existing folder that pmcllama did not write (no pmcllama "
                        "manifest.json); choose a new folder, or --force to add the outputs beside "
                        "its files (none of yours is removed or overwritten)", shown)
    return old


def prepare_partial(out: Path, shown: str | Path, fresh: bool) -> Path:
    """`<out>.partial/`, made (or emptied when `fresh`) only if pmcllama owns it."""
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        # earlier versions left no mark: their work folders (parts/, checkpoints/) say it
        ours = any((tmp / n).exists() for n in (PARTIAL_MARK, "parts", "checkpoints"))
        if not ours and (not tmp.is_dir() or any(tmp.iterdir())):
            raise UserError(f"{tmp} exists and pmcllama did not write it; move it away first", shown)
        if fresh:
            shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / PARTIAL_MARK).touch()
    return tmp


def _changes(old: dict, config: dict, described: list[dict]) -> str:
    before = old.get("config") or {}
    changed = sorted(k for k in set(config) | set(before) if config.get(k) != before.get(k))
    if old.get("inputs") != described:
        changed.append("inputs")
    if old.get("pmcllama_version") != __version__:
        changed.append("pmcllama version")
    return ", ".join(changed) or "fingerprint"


def publish(tmp: Path, out: Path, old: dict | None) -> None:
    """Move the finished `tmp` into `out`, replacing only files pmcllama wrote there."""
    (tmp / PARTIAL_MARK).unlink(missing_ok=True)
    if not out.exists() or not any(out.iterdir()):
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return
    new, present = _files(tmp), _files(out)
    # a manifest from before output lists: only what this run writes again is replaced
    ours = set(old.get("outputs", new)) | set(OWN_FILES) if old else set()
    if present <= ours:  # entirely ours: swap the folders atomically
        old_dir = tmp.with_name(f".{out.name}.pmcllama-old-{os.getpid()}")
        os.replace(out, old_dir)
        os.replace(tmp, out)
        shutil.rmtree(old_dir)
        return
    clash = sorted((new & present) - ours)
    if clash:
        raise UserError(f"would overwrite {clash[0]}, which pmcllama did not write; the new output "
                        f"is left in {tmp}", out)
    _merge_into(tmp, out, sorted(ours & present), sorted(new))


def _merge_into(tmp: Path, out: Path, remove: list[str], new: list[str]) -> None:
    """Replace pmcllama's files inside a folder that also holds a user's; manifest last."""
    for rel in [MANIFEST] + remove:
        (out / rel).unlink(missing_ok=True)
    for rel in sorted(remove, key=len, reverse=True):  # drop the folders that emptied
        parent = (out / rel).parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    for rel in sorted(new, key=lambda r: r == MANIFEST):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)
    shutil.rmtree(tmp)


def _write_manifest(tmp: Path, name: str, fingerprint: str, config: dict, described: list, result: StageResult,
                    started: datetime, wall: float) -> None:
    """The stage's manifest.json: what made it (version, revision, config, inputs), what it holds."""
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
    manifest["outputs"] = sorted(_files(tmp) - {PARTIAL_MARK} | {MANIFEST})
    write_json(tmp / MANIFEST, manifest)


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
    the work of an interrupted run is left there for `work` to continue. A folder pmcllama did
    not write is refused before any work (see `check_output`).
    """
    shown, out = out, output_folder(out)
    described = [describe_input(p) for p in inputs]
    config = cfg.model_dump(mode="json")
    fingerprint = hashlib.sha256(
        json.dumps({"stage": name, "config": config, "inputs": described, "version": __version__},
                   sort_keys=True, default=str).encode()
    ).hexdigest()
    old = check_output(out, shown, force)
    if old is not None and not force:
        if old.get("fingerprint") == fingerprint:
            log(f"[{name}] {shown} is up to date (same config and inputs); skipping. Use --force to redo.")
            return Path(shown)
        log(f"[{name}] {shown} was made with other settings (changed: {_changes(old, config, described)}); "
            "redoing it")
    tmp = prepare_partial(out, shown, fresh=force or not resumable)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    try:
        result = work(tmp)
    except BaseException:
        if not resumable:  # nothing to continue from: leave no half-made folder behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    wall = time.perf_counter() - t0
    (tmp / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    _write_manifest(tmp, name, fingerprint, config, described, result, started, wall)
    publish(tmp, out, old)
    log(f"[{name}] wrote {shown} in {wall:.1f}s")
    return Path(shown)
