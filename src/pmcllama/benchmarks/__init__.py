"""Benchmarks: one small loader module per format, plus scoring and statistics.

`FORMATS` maps a format name to its loader; `load_benchmark(format, path, ...)` returns a
`Loaded` benchmark (items, template version, choice labels). To add a format, write a module
with `load(path, ...) -> Loaded` and register it here. Nothing here imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from pmcllama.benchmarks import mcq, medmcqa, medqa, mmlu, pubmedqa
from pmcllama.benchmarks.base import Item, Loaded
from pmcllama.errors import UserError

FORMATS: dict[str, Callable[..., Loaded]] = {
    "pubmedqa": pubmedqa.load,
    "medqa": medqa.load,
    "medmcqa": medmcqa.load,
    "mmlu": mmlu.load,
    "mcq": mcq.load,
}
CHOICE_FORMATS = ("mcq", "medqa")  # formats that can score option texts (choices="text")

__all__ = ["FORMATS", "Item", "Loaded", "load_benchmark"]


def load_benchmark(
    format: str,
    path: str | Path,
    choices: str = "letters",
    limit: int | None = None,
    ids: str | Path | None = None,
    subject: str | None = None,
) -> Loaded:
    """Load a benchmark file in one of `FORMATS`; `choices` is medqa's and mcq's, `ids`
    pubmedqa's, `subject` mmlu's."""
    if format not in FORMATS:
        raise UserError(f"unknown benchmark format {format!r} (known: {', '.join(FORMATS)})")
    if choices != "letters" and format not in CHOICE_FORMATS:
        raise UserError("choices='text' applies to format mcq or medqa only", path)
    if ids is not None and format != "pubmedqa":
        raise UserError("ids applies to format pubmedqa only", path)
    if subject is not None and format != "mmlu":
        raise UserError("subject applies to format mmlu only", path)
    if format == "pubmedqa":
        return pubmedqa.load(path, limit=limit, ids=ids)
    if format == "mmlu":
        return mmlu.load(path, limit=limit, subject=subject)
    if format == "medmcqa":
        return medmcqa.load(path, limit=limit)
    return FORMATS[format](path, choices=choices, limit=limit)
