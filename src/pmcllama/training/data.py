"""Training data feeds: token-shard mixtures (pretrain) and masked chat examples (finetune).

Both produce plans of sequences -- lists of token id arrays with their labels -- that the
loop lays end to end without padding (training/varlen.py). Deterministic given the seed; corpora stay on disk
(numpy memmap), only the sequences of the current step are materialised.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from pmcllama.errors import UserError
from pmcllama.inputs import jsonl_rows
from pmcllama.training.example import IGNORE, Example
from pmcllama.training.packing import doc_segments

class MixtureSampler:
    """Sequences drawn from several token-shard sources with given weights.

    Each source is cut into units: contiguous seq_len chunks (`packed`) or, per document,
    one random seq_len window (`window`, PMC-LLaMA v1; short documents whole). Each
    sequence picks a source with probability proportional to its weight, then takes that
    source's next unit in a shuffled order; epoch `e` of source `i` uses the order seeded by
    (seed, i, e). Units in `exclude` (held out for validation, see `hold_out`) are never
    drawn. With `doc_mask` (packed mode), attention stays inside the documents of a chunk
    (training/packing.py). `state_dict()` (RNG state, epoch and cursor per source; small,
    JSON-able) and `load_state_dict()` resume the stream at exactly the same position.
    """

    def __init__(self, shards: dict, weights: dict[str, float], seq_len: int, mode: str, seed: int,
                 exclude: dict[str, list[int]] | None = None, doc_mask: bool = False):
        self.shards = {k: v for k, v in shards.items() if weights.get(k, 0) > 0}
        if not self.shards:
            raise UserError("no corpus source with a positive weight")
        self.names = sorted(self.shards)
        w = np.array([weights[n] for n in self.names], dtype=np.float64)
        self.probs = w / w.sum()
        self.seq_len, self.mode, self.seed = seq_len, mode, seed
        self.doc_mask = doc_mask and mode == "packed"
        self.rng = np.random.default_rng(seed)
        self.units = {n: self._count_units(self.shards[n]) for n in self.names}
        self.excluded = {n: np.unique(np.asarray((exclude or {}).get(n, []), dtype=np.int64)) for n in self.names}
        for n in self.names:
            if len(self.excluded[n]) >= self.units[n]:
                raise UserError(f"holding out validation sequences leaves no training data in source '{n}'")
        self.last_unit: tuple[str, int] | None = None
        self.epoch = {n: -1 for n in self.names}
        self.cursor = {n: 0 for n in self.names}
        self.order = {n: np.empty(0, dtype=np.int64) for n in self.names}

    def _count_units(self, shard) -> int:
        if self.mode == "window":
            return shard.num_docs
        return max(1, math.ceil(shard.num_tokens / self.seq_len))

    @property
    def epoch_size(self) -> int:
        """Sequences per epoch: every unit of every source once."""
        return sum(self.units[n] - len(self.excluded[n]) for n in self.names)

    def _order(self, name: str, epoch: int) -> np.ndarray:
        key = [self.seed, self.names.index(name), epoch]
        order = np.random.default_rng(key).permutation(self.units[name])
        return order[~np.isin(order, self.excluded[name])] if len(self.excluded[name]) else order

    def _next_unit(self, name: str) -> int:
        if self.epoch[name] < 0 or self.cursor[name] >= len(self.order[name]):
            self.epoch[name] += 1
            self.order[name] = self._order(name, self.epoch[name])
            self.cursor[name] = 0
        unit = int(self.order[name][self.cursor[name]])
        self.cursor[name] += 1
        return unit

    def _tokens(self, name: str, unit: int) -> np.ndarray:
        shard = self.shards[name]
        if self.mode == "window":
            doc = shard.doc(unit)
            if len(doc) > self.seq_len:
                start = int(self.rng.integers(0, len(doc) - self.seq_len + 1))
                doc = doc[start:start + self.seq_len]
            return np.asarray(doc, dtype=np.int64)
        start = unit * self.seq_len
        return np.asarray(shard.tokens[start:start + self.seq_len], dtype=np.int64)

    def __iter__(self) -> "MixtureSampler":
        return self

    def __next__(self) -> Example:
        name = self.names[int(self.rng.choice(len(self.names), p=self.probs))]
        unit = self._next_unit(name)
        self.last_unit = (name, unit)
        ids = self._tokens(name, unit)
        if self.doc_mask:
            return doc_segments(Example(ids, ids.copy(), name), self._doc_starts(name, unit, len(ids)))
        return Example(ids, ids.copy(), name)

    def _doc_starts(self, name: str, unit: int, length: int) -> np.ndarray:
        """Offsets inside packed chunk `unit` where a document begins."""
        starts = self.shards[name].index[:, 0]
        lo = unit * self.seq_len
        return starts[np.searchsorted(starts, lo, side="right"):np.searchsorted(starts, lo + length)] - lo

    def hold_out(self, n: int) -> tuple[list[Example], dict[str, list[int]]]:
        """`n` sequences and, per source, the units they came from (to `exclude` from training)."""
        examples, units = [], {}
        for _ in range(n):
            examples.append(next(self))
            name, unit = self.last_unit
            units.setdefault(name, []).append(unit)
        return examples, units

    def state_dict(self) -> dict:
        return {"kind": "mixture", "names": list(self.names), "units": dict(self.units),
                "excluded": {n: len(v) for n, v in self.excluded.items()},
                "rng": self.rng.bit_generator.state, "epoch": dict(self.epoch), "cursor": dict(self.cursor)}

    def load_state_dict(self, state: dict) -> None:
        excluded = {n: len(v) for n, v in self.excluded.items()}
        if (state.get("kind"), state.get("names"), state.get("units"), state.get("excluded")) != (
                "mixture", self.names, self.units, excluded):
            raise ValueError("the data position was saved for other corpus sources or sizes")
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.cursor = dict(state["epoch"]), dict(state["cursor"])
        self.order = {n: self._order(n, e) if e >= 0 else np.empty(0, dtype=np.int64) for n, e in self.epoch.items()}


class EpochStream:
    """Examples in a fresh seeded order every epoch (epoch `e` seeded by (seed, e)), forever;
    `state_dict()` / `load_state_dict()` save and restore the exact position."""

    def __init__(self, examples: Sequence, seed: int):
        if not examples:
            raise ValueError("EpochStream needs at least one example")
        self.examples, self.seed = examples, seed
        self.epoch, self.cursor = 0, 0
        self.order = self._order(0)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def __iter__(self) -> "EpochStream":
        return self

    def __next__(self):
        if self.cursor >= len(self.order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self.order = self._order(self.epoch)
        item = self.examples[int(self.order[self.cursor])]
        self.cursor += 1
        return item

    def state_dict(self) -> dict:
        return {"kind": "epochs", "size": len(self.examples), "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "epochs" or state.get("size") != len(self.examples):
            raise ValueError("the data position was saved for another training set")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.order = self._order(self.epoch)


class Batches:
    """Global batches of `size` examples from a resumable stream (MixtureSampler, EpochStream)."""

    def __init__(self, stream, size: int):
        self.stream, self.size = stream, size

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> list:
        return [next(self.stream) for _ in range(self.size)]

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def read_chat_jsonl(path: Path) -> list[dict]:
    records = []
    for lineno, rec, error in jsonl_rows(path, "chat JSON Lines file"):
        if error is not None:
            raise UserError(error.replace("not valid JSON", "line is not JSON", 1), path, lineno)
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise UserError("record has no valid 'messages' list of {role, content}", path, lineno)
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError("record has no assistant turn (nothing to learn)", path, lineno)
        if any(m["role"] == "assistant" and not str(m["content"]).strip() for m in msgs):
            raise UserError("record has an empty assistant turn", path, lineno)
        records.append(rec)
    if not records:
        raise UserError("no records", path)
    return records


ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)


def _render_alpaca(messages: Sequence[dict], eos: str) -> tuple[str, list[tuple[int, int]]]:
    """PMC-LLaMA's Alpaca layout; returns text and the character spans of the answers."""
    text, spans, pending = "", [], []
    for m in messages:
        if m["role"] == "assistant":
            text += ALPACA_PROMPT.format(instruction="\n\n".join(pending)) if pending else ""
            start = len(text)
            text += " " + m["content"] + eos
            spans.append((start, len(text)))
            pending = []
            text += "\n\n"
        elif m["role"] == "user":
            pending.append(m["content"])
    return text, spans


def _render_chat(tokenizer, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The model's chat template; answer spans found by rendering growing prefixes."""
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise UserError("the chat template does not render conversations prefix-consistently; "
                            "use template: alpaca")
        spans.append((len(before), len(through)))
    return full, spans


def encode_chat(tokenizer, messages: Sequence[dict], template: str, seq_len: int) -> Example | None:
    """Token ids with labels only on assistant answers; None when truncation leaves no answer."""
    if template == "alpaca":
        text, spans = _render_alpaca(messages, tokenizer.eos_token or "")
    else:
        text, spans = _render_chat(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    labels = np.full_like(ids, IGNORE)
    for k, (s, e) in enumerate(enc["offset_mapping"]):
        if any(a <= s < b for a, b in spans) and e > s:
            labels[k] = ids[k]
    ids, labels = ids[:seq_len], labels[:seq_len]
    if not (labels != IGNORE).any():
        return None
    return Example(ids, labels)


def collate(examples: Sequence[Example], pad_id: int):
    """Right-pad to the longest example: input_ids, labels (IGNORE on pads) and an attention_mask;
    or, when an example is packed (has position_ids), position_ids instead of the mask: the pads
    then form a segment of their own, and transformers builds the block-diagonal causal mask
    from the restarts of the position ids (see training/packing.py)."""
    import torch

    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    packed = any(e.position_ids is not None for e in examples)
    pos = torch.arange(n, dtype=torch.long).repeat(len(examples), 1)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        ids[i, :k] = torch.from_numpy(e.input_ids)
        labels[i, :k] = torch.from_numpy(e.labels)
        mask[i, :k] = 1
        if e.position_ids is not None:
            pos[i, :k] = torch.from_numpy(e.position_ids)
        pos[i, k:] = torch.arange(n - k)
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": pos}
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def label_tokens(examples: Sequence[Example]) -> int:
    """Tokens that carry a loss once labels are shifted by one (the first position never does)."""
    return int(sum((e.labels[1:] != IGNORE).sum() for e in examples))
