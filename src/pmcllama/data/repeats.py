"""The dedup keys that occur more than once in a corpus, found on disk in flat memory.

Exact and near dedup decide, in corpus order, whether a document shares a key (its text digest,
or one of its MinHash band keys) with an earlier kept one. Only keys that occur at least twice
in the whole corpus can ever match, so before the merge one pass over the parts' docs.jsonl
feeds every key (as a 64-bit value) to a `RepeatFinder`: the values go to `PARTITIONS` files on
disk by their top bits, and each file is then counted on its own with numpy. What the dedup
steps keep in memory during the merge is then the repeated keys and the documents that hold
them, not one entry per document: 4.8M distinct papers cost nothing there, where an index of
every kept document costs about a kilobyte each (bench/bench_dedup_memory.py).

The decisions are the same as with an index of every document: a key seen once can only be
the first (and last) of its kind, and it would never have matched anything.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

PARTITIONS = 256  # files the values are spread over (by their top 8 bits)
_BUFFER = 4096  # values held per partition before they are appended to its file
_SHIFT = np.uint64(64 - 8)


class RepeatFinder:
    """Collect 64-bit values on disk under `folder`; `repeated()` gives those seen twice or more.
    It touches only its own partition files there (`000.u64`..`255.u64`; a killed run's are
    replaced), and removes the folder at the end only when that leaves it empty."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files = [self.folder / f"{k:03d}.u64" for k in range(PARTITIONS)]  # its own, and only these
        for path in self.files:
            path.unlink(missing_ok=True)
        self.pending: list[np.ndarray] = []
        self.held = 0
        self.added = 0

    def add(self, values: np.ndarray) -> None:
        """Record some values (uint64)."""
        if values.size:
            self.pending.append(np.asarray(values, dtype=np.uint64))
            self.held += values.size
            self.added += values.size
            if self.held >= _BUFFER * 16:
                self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        values = np.concatenate(self.pending)
        self.pending, self.held = [], 0
        part = values >> _SHIFT
        order = np.argsort(part, kind="stable")
        values, part = values[order], part[order]
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        ends = np.r_[starts[1:], values.size]
        for s, e in zip(starts.tolist(), ends.tolist()):
            with open(self.files[int(part[s])], "ab") as fh:
                values[s:e].tofile(fh)

    def repeated(self) -> np.ndarray:
        """The sorted values added twice or more (uint64); the files on disk are removed."""
        self._flush()
        found = []
        for path in self.files:
            if path.is_file():
                values, counts = np.unique(np.fromfile(path, dtype=np.uint64), return_counts=True)
                found.append(values[counts > 1])
                path.unlink()
        with contextlib.suppress(OSError):  # not empty: something else is there, leave it
            self.folder.rmdir()
        return np.concatenate(found) if found else np.zeros(0, dtype=np.uint64)


def contains(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which of `values` are in `sorted_values` (both uint64), as a boolean array."""
    if sorted_values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    at = np.searchsorted(sorted_values, values)
    return sorted_values[np.minimum(at, sorted_values.size - 1)] == values
