"""Benchmarks: one small loader module per format, plus scoring and statistics.

`FORMATS` maps a format name to its loader; `load_benchmark(format, path, ...)` returns a
`Loaded` benchmark (items, template version, choice labels). To add a format, write a module
with `load(path, ...) -> Loaded` and register it here. Nothing here imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from pmcllama.benchmarks import medqa, pubmedqa
from pmcllama.benchmarks.base import Item, Loaded
from pmcllama.errors import UserError

FORMATS: dict[str, Callable[..., Loaded]] = {
    "pubmedqa": pubmedqa.load,
    "medqa": medqa.load,
}

__all__ = ["FORMATS", "Item", "Loaded", "load_benchmark"]


def load_benchmark(
    format: str,
    path: str | Path,
    choices: str = "letters",
    limit: int | None = None,
    ids: str | Path | None = None,
) -> Loaded:
    """Load a benchmark file in one of `FORMATS`; `choices` is medqa's, `ids` pubmedqa's."""
    if format not in FORMATS:
        raise UserError(f"unknown benchmark format {format!r} (known: {', '.join(FORMATS)})")
    if format == "pubmedqa":
        if choices != "letters":
            raise UserError("choices='text' applies to format medqa only", path)
        return pubmedqa.load(path, limit=limit, ids=ids)
    if ids is not None:
        raise UserError("ids applies to format pubmedqa only", path)
    return medqa.load(path, choices=choices, limit=limit)
