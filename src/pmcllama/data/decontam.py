"""Decontamination: find training text that shares a long n-gram with a benchmark item.

As GPT-3 (Brown et al. 2020, appendix C): text is lower-cased and split into word tokens
(runs of letters and digits; punctuation and spacing are ignored), and a text is contaminated
when it shares any n-gram (default 13 tokens) with a benchmark item. The index keeps one
64-bit hash per distinct benchmark n-gram (a tuple hash of blake2b token ids, the same in every
process), mapped to the item(s) it came from, so memory grows with the benchmarks, not with the
text checked.

Benchmarks are read with the benchmark modules' `docs` in their official formats (`medqa`, `medmcqa`,
`mmlu`: the question; `pubmedqa`: the question and each context) or from any JSONL with a
`question` field (`jsonl`). A spec is a path (format detected from the file) or
`format:path`. Items shorter than n tokens cannot be matched and are counted as `short`.

    index = build_index(["medqa:test.jsonl", "ori_pqal.json"])
    index.find("some training text ...")  # -> [("test.jsonl", "line-12"), ...]
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Iterator

from pmcllama.data.qa import FORMATS, QA_FORMATS, detect_format, json_records
from pmcllama.errors import UserError

BENCHMARK_FORMATS = (*QA_FORMATS, "jsonl")
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; punctuation dropped)."""
    return _WORD.findall(text.lower())


_TOKEN_IDS: dict[str, int] = {}


def _token_id(token: str) -> int:
    """A 63-bit id per token (blake2b: the same in every process, unlike str hashes)."""
    tid = _TOKEN_IDS.get(token)
    if tid is None:
        if len(_TOKEN_IDS) >= 1 << 20:  # bound the cache on huge vocabularies
            _TOKEN_IDS.clear()
        tid = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little") >> 1
        _TOKEN_IDS[token] = tid
    return tid


def ngram_hashes(tokens: list[str], n: int) -> list[int]:
    """A 64-bit hash of every n-gram of `tokens` (none when there are fewer than n): Python's
    tuple hash of the token ids, which for ints does not change between processes."""
    ids = [_token_id(t) for t in tokens]
    return [hash(tuple(ids[i:i + n])) for i in range(len(ids) - n + 1)]


class NgramIndex:
    """Hashed n-grams of benchmark items; `find(text)` names the items a text overlaps."""

    def __init__(self, n: int = 13):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.items: list[tuple[str, str]] = []  # (benchmark, item id)
        self._first: dict[int, int] = {}  # n-gram hash -> first item index
        self._more: dict[int, list[int]] = {}  # n-gram hash -> further item indexes
        self.stats: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self._first)

    def add(self, benchmark: str, item_id: str, texts: str | Iterable[str]) -> int:
        """Index an item's text(s) (n-grams never span two texts); returns its n-gram count."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        stats = self.stats.setdefault(benchmark, {"items": 0, "short": 0, "ngrams": 0})
        idx = len(self.items)
        self.items.append((benchmark, item_id))
        grams = {h for t in texts for h in ngram_hashes(words(t), self.n)}
        stats["items"] += 1
        stats["short"] += not grams
        stats["ngrams"] += len(grams)
        for h in grams:
            first = self._first.setdefault(h, idx)
            if first != idx:
                self._more.setdefault(h, []).append(idx)
        return len(grams)

    def find(self, text: str | Iterable[str]) -> list[tuple[str, str]]:
        """(benchmark, item id) of every item sharing an n-gram with `text`, in order of first match."""
        texts = [text] if isinstance(text, str) else text
        found: dict[int, None] = {}
        for t in texts:
            for h in ngram_hashes(words(t), self.n):
                first = self._first.get(h)
                if first is not None:
                    found.setdefault(first)
                    for other in self._more.get(h, ()):
                        found.setdefault(other)
        return [self.items[i] for i in found]

    def contaminated(self, text: str | Iterable[str]) -> bool:
        texts = [text] if isinstance(text, str) else text
        return any(h in self._first for t in texts for h in ngram_hashes(words(t), self.n))


def parse_spec(spec: str) -> tuple[str | None, Path]:
    """`format:path` or `path` -> (format or None, path)."""
    head, sep, tail = spec.partition(":")
    if sep and head in BENCHMARK_FORMATS:
        return head, Path(tail)
    return None, Path(spec)


def benchmark_texts(fmt: str | None, path: Path) -> Iterator[tuple[str, list[str]]]:
    """(item id, texts) of every item of a benchmark file; a malformed item is an error."""
    if not path.is_file():
        raise UserError("benchmark file not found", path)
    fmt = fmt or detect_format(path)
    if fmt is None:
        raise UserError("cannot tell the benchmark format; prefix it: medqa:, medmcqa:, pubmedqa:, "
                        "mmlu: or jsonl: (any JSONL with a 'question' field)", path)
    if fmt == "jsonl":
        for row in json_records(path):
            q = row.raw.get("question") if isinstance(row.raw, dict) else None
            if row.error or not isinstance(q, str):
                raise UserError(f"benchmark item: {row.error or 'no question string'}", path, row.line)
            rid = row.raw.get("id")
            default = f"line-{row.line}" if row.line is not None else f"item-{row.item}"
            yield (str(rid) if isinstance(rid, (str, int)) else default), [q]
        return
    try:
        found = FORMATS[fmt].docs(path)
    except UserError as e:
        raise UserError(f"benchmark {fmt}: {e.reason}", e.path, e.line) from None
    for doc in found:
        yield doc.id, [doc.question, *doc.contexts]


def build_index(specs: Iterable[str], n: int = 13) -> NgramIndex:
    """An index of every item of the benchmark files (named by file name)."""
    index = NgramIndex(n)
    for spec in specs:
        fmt, path = parse_spec(spec)
        for item_id, texts in benchmark_texts(fmt, path):
            index.add(path.name, item_id, texts)
    return index


class Decontaminate:
    """Decontamination as a corpus step, in two halves as `ExactDedup` and `NearDedup`:
    `key(text)`, the (benchmark, item) pairs the text shares an n-gram with (parallel
    workers; docs.jsonl field `found`), and `check(found, doc_id)` in corpus order, which
    counts the document and its items and returns `Drop("contaminated", the items)` under
    action `drop`, None under `mark` (kept, and listed by the caller in decontamination.jsonl)."""

    name, field, reason = "decontaminate", "found", "contaminated"

    def __init__(self, index: NgramIndex, action: str = "drop") -> None:
        self.index, self.action = index, action
        self.documents = 0
        self.items: dict[tuple[str, str], int] = {}  # (benchmark, item) -> documents

    def key(self, text: str) -> list[tuple[str, str]]:
        return self.index.find(text)

    def check(self, found: list, doc_id: str = "") -> str | None:
        if not found:
            return None
        self.documents += 1
        for bench, item in found:
            self.items[(bench, item)] = self.items.get((bench, item), 0) + 1
        if self.action == "drop":
            from pmcllama.data.filters import Drop

            return Drop(self.reason, "; ".join(f"{b} item {i}" for b, i in found))
        return None

    def report(self) -> dict:
        """n-gram length, action, contaminated documents, and per benchmark its items and those found."""
        per_bench: dict[str, int] = {}
        for bench, _ in self.items:
            per_bench[bench] = per_bench.get(bench, 0) + 1
        return {"ngram": self.index.n, "action": self.action, "documents": self.documents,
                "benchmarks": {b: {**st, "items_found": per_bench.get(b, 0)} for b, st in self.index.stats.items()}}
