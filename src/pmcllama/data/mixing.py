"""Mixing an instruction set: deduplication, per-source weights and caps, the train/validation
split, and statistics (characters, and tokens with the target tokenizer).

Weights, deterministic for a seed:
- `weight < 1`: the source keeps a random `weight` share of its records (before the split, so
  validation shrinks with it);
- `weight > 1`: after the split, the source's training records are repeated: each `int(weight)`
  times, plus a random `weight - int(weight)` share once more (copies get ids `<id>~2`,
  `<id>~3`, ...; validation is not repeated, so no copy of a training record is ever in it).
"""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Callable, Iterable


def _key(record: dict) -> tuple:
    return tuple((m["role"], m["content"]) for m in record["messages"] if m["role"] != "system")


def dedup(records: list[dict]) -> tuple[list[dict], Counter]:
    """Records with a new (prompt, answer); duplicates counted by source."""
    seen: set[tuple] = set()
    kept, dups = [], Counter()
    for r in records:
        k = _key(r)
        if k in seen:
            dups[r["source"]] += 1
        else:
            seen.add(k)
            kept.append(r)
    return kept, dups


def split(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic random split (record order kept within each part)."""
    n = len(records)
    n_val = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_val = min(max(1, n_val), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return ([r for i, r in enumerate(records) if i not in val_idx],
            [r for i, r in enumerate(records) if i in val_idx])


def _sample(records: list[dict], k: int, rng: random.Random) -> list[dict]:
    """`k` of `records`, chosen at random, in their original order."""
    keep = set(rng.sample(range(len(records)), k))
    return [r for i, r in enumerate(records) if i in keep]


def downsample(records: list[dict], weights: dict[str, float], seed: int) -> tuple[list[dict], Counter]:
    """Sources with weight < 1 keep round(n * weight) records (at least 1); (kept, dropped by source)."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_source[r["source"]].append(r)
    keep: set[int] = set()
    dropped = Counter()
    for name, recs in by_source.items():
        w = weights.get(name, 1.0)
        chosen = recs if w >= 1 else _sample(recs, max(1, round(len(recs) * w)), random.Random(f"{seed}|down|{name}"))
        keep.update(id(r) for r in chosen)
        dropped[name] = len(recs) - len(chosen)
    return [r for r in records if id(r) in keep], +dropped


def upsample(records: list[dict], weights: dict[str, float], seed: int) -> tuple[list[dict], Counter]:
    """Training records of sources with weight > 1 repeated (see the module doc); (records,
    copies added by source). Copies follow their source's records."""
    out, added = [], Counter()
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_source[r["source"]].append(r)
    for name, recs in by_source.items():
        w = weights.get(name, 1.0)
        out.extend(recs)
        if w <= 1:
            continue
        whole, frac = int(w), w - int(w)
        copies = [(r, k) for k in range(2, whole + 1) for r in recs]
        extra = _sample(recs, round(len(recs) * frac), random.Random(f"{seed}|up|{name}")) if frac else []
        copies += [(r, whole + 1) for r in extra]
        out.extend({**r, "id": f"{r['id']}~{k}"} for r, k in copies)
        added[name] = len(copies)
    return out, added


# ----------------------------------------------------------------------------- statistics


def _chars(values: list[int]) -> dict:
    return {"mean": round(sum(values) / len(values), 1) if values else 0, "max": max(values, default=0)}


def split_stats(records: list[dict]) -> dict:
    prompts = [sum(len(m["content"]) for m in r["messages"] if m["role"] == "user") for r in records]
    answers = [sum(len(m["content"]) for m in r["messages"] if m["role"] == "assistant") for r in records]
    return {"records": len(records),
            "sources": dict(Counter(r["source"] for r in records)),
            "tasks": dict(Counter(f"{r['source']}/{r['task']}" for r in records)),
            "prompt_chars": _chars(prompts), "answer_chars": _chars(answers)}


def summary(values: list[int]) -> dict:
    """records, sum, mean, p50, p95 and max of token counts (nearest-rank percentiles)."""
    if not values:
        return {"records": 0, "sum": 0, "mean": 0, "p50": 0, "p95": 0, "max": 0}
    s = sorted(values)

    def pct(p: float) -> int:
        return s[max(0, math.ceil(p / 100 * len(s)) - 1)]

    return {"records": len(s), "sum": sum(s), "mean": round(sum(s) / len(s), 1), "p50": pct(50),
            "p95": pct(95), "max": s[-1]}


def token_counter(tokenizer) -> Callable[[list[list[dict]]], list[int]]:
    """A function: conversations -> token counts, rendered as training renders them (the chat
    template when the tokenizer has one, else the turns' texts joined)."""

    def render(messages: list[dict]) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    def count(conversations: list[list[dict]]) -> list[int]:
        texts = [render(m) for m in conversations]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def token_stats(records: Iterable[dict], count: Callable[[list[list[dict]]], list[int]],
                batch: int = 512) -> dict:
    """Token counts summarised over all records, per source and per source/task."""
    records = list(records)
    lengths: list[int] = []
    for i in range(0, len(records), batch):
        lengths.extend(count([r["messages"] for r in records[i:i + batch]]))
    groups: dict[str, dict[str, list[int]]] = {"sources": defaultdict(list), "tasks": defaultdict(list)}
    for r, n in zip(records, lengths):
        groups["sources"][r["source"]].append(n)
        groups["tasks"][f"{r['source']}/{r['task']}"].append(n)
    return {"all": summary(lengths),
            **{g: {k: summary(v) for k, v in sorted(d.items())} for g, d in groups.items()}}
