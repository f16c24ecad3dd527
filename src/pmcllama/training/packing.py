"""Packing: several examples (or documents) in one training sequence, without attention between them.

A packed row is whole segments back to back. Its position ids restart at 0 at every segment,
and the label of each segment's first token is IGNORE (nothing of its own precedes it). The
loop runs attention inside each segment (training/varlen.py). For models that keep their own
attention it collates padded rows with position ids and no 2-D attention mask; transformers
(5.x, `masking_utils.find_packed_sequence_indices`) builds the block-diagonal causal mask from
the restarts for sdpa, eager and flex attention, and flash-attention takes them as
variable-length boundaries. Either way the loss of a packed row is the sum of the losses of
its segments computed one by one (tests/test_training_packing.py, test_training_varlen.py).
The model must be called with `use_cache=False`: a KV cache turns the detection off.

- `PackedBatches`: instruction tuning -- each optimizer step takes examples in the stream's
  order and puts each into the first of `rows` sequences where it still fits (first fit), until
  one fits nowhere; that one opens the next step. Exactly resumable: the saved position is the
  stream's position before that pending example.
- `doc_segments`: pretraining with `doc_mask` -- the documents inside one packed chunk.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pmcllama.training.example import IGNORE, Example


def segment_positions(length: int, starts: Sequence[int]) -> np.ndarray:
    """Position ids for `length` tokens that restart at 0 at every offset in `starts`."""
    pos = np.arange(length, dtype=np.int64)
    bounds = np.asarray(sorted(s for s in starts if 0 < s < length), dtype=np.int64)
    if bounds.size:
        seg = np.searchsorted(bounds, pos, side="right")  # segment index of each token
        first = np.concatenate([[0], bounds])
        pos -= first[seg]
    return pos


def doc_segments(ex: Example, starts: Sequence[int]) -> Example:
    """The example with attention kept inside the documents beginning at `starts` (offsets)."""
    labels = ex.labels.copy()
    inner = [s for s in starts if 0 < s < len(ex.input_ids)]
    labels[inner] = IGNORE
    return Example(ex.input_ids, labels, ex.source, segment_positions(len(ex.input_ids), inner))


def pack(examples: Sequence[Example]) -> Example:
    """One row holding `examples` back to back, each attending only to itself."""
    ids = np.concatenate([e.input_ids for e in examples])
    labels = np.concatenate([e.labels for e in examples])
    lengths = np.array([len(e.input_ids) for e in examples])
    starts = np.cumsum(lengths) - lengths
    labels[starts] = IGNORE
    sources: dict[str, int] = {}
    for e in examples:
        for src, n in e.tokens_by_source().items():
            sources[src] = sources.get(src, 0) + n
    return Example(ids, labels, examples[0].source, segment_positions(len(ids), starts[1:]), sources)


class PackedBatches:
    """Global batches of `rows` packed sequences of at most `seq_len` tokens (first fit, in order)."""

    def __init__(self, stream, rows: int, seq_len: int):
        self.stream, self.rows, self.seq_len = stream, rows, seq_len
        self.pending: Example | None = None
        self.before: dict | None = None  # the stream's position before `pending` was read

    def _read(self) -> None:
        self.before = self.stream.state_dict()
        self.pending = next(self.stream)
        if len(self.pending.input_ids) > self.seq_len:
            raise ValueError(f"example of {len(self.pending.input_ids)} tokens exceeds seq_len {self.seq_len}")

    def __iter__(self) -> "PackedBatches":
        return self

    def __next__(self) -> list[Example]:
        bins: list[list[Example]] = [[] for _ in range(self.rows)]
        free = [self.seq_len] * self.rows
        if self.pending is None:
            self._read()
        while True:
            n = len(self.pending.input_ids)
            slot = next((i for i, f in enumerate(free) if f >= n), None)
            if slot is None:
                break
            bins[slot].append(self.pending)
            free[slot] -= n
            self._read()
        return [pack(b) for b in bins]

    def state_dict(self) -> dict:
        inner = self.before if self.pending is not None else self.stream.state_dict()
        return {"kind": "packed", "rows": self.rows, "seq_len": self.seq_len, "stream": inner}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("kind"), state.get("rows"), state.get("seq_len")) != ("packed", self.rows, self.seq_len):
            raise ValueError("the data position was saved without packing or for another batch shape")
        self.stream.load_state_dict(state["stream"])
        self.pending, self.before = None, None


def steps_per_epoch(make_stream, rows: int, seq_len: int) -> int:
    """Packed optimizer steps that one pass over a fresh `make_stream()` (an EpochStream) takes."""
    stream = make_stream()
    batches = PackedBatches(stream, rows, seq_len)
    steps = 0
    while stream.epoch == 0:
        next(batches)
        steps += 1
    return steps
