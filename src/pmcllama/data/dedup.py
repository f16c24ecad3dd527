"""Near-duplicate detection: MinHash signatures + locality-sensitive hashing (LSH).

A document is the set of its word n-grams (shingles; default 5 words, lower-cased,
punctuation ignored, as `pmcllama.data.decontam.words`). Its MinHash signature holds
`num_perm` minima of random linear hashes of those shingles; the share of equal minima
between two signatures estimates the Jaccard similarity of the two shingle sets. The
signature is cut into `bands` bands of `rows` values (chosen from the `threshold` so that
pairs above it collide in at least one band with high probability, pairs well below it
rarely); two documents sharing a band are near-duplicates, and the later one is dropped
(reason `near_duplicate`), so the order of sources decides which copy is kept.

Everything is deterministic across processes (word ids are blake2b hashes, the permutations
come from a seeded numpy generator), so signatures computed by parallel workers can be
compared by one process. Memory: one dict entry per band per indexed document (about
`bands` x 100 bytes), independent of document length; the corpus merge first finds, on disk,
the band keys that occur twice or more (`pmcllama.data.repeats`) and indexes only those, so
only documents with a near-duplicate candidate take memory.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from pmcllama.data.decontam import _TOKEN_IDS, _token_id, words
from pmcllama.data.filters import Drop
from pmcllama.data.repeats import contains

_MASK32 = np.uint64(0xFFFFFFFF)
_SHINGLE_MUL = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 4096  # shingles hashed at a time: bounds memory to _CHUNK x num_perm x 8 bytes


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the false positive + false
    negative probability mass around `threshold` (as datasketch does)."""
    s = np.linspace(0.0, 1.0, 1001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1 - (1 - s ** r) ** b  # probability that a pair of similarity s collides
            fp = np.trapezoid(p[s < threshold], s[s < threshold])
            fn = np.trapezoid(1 - p[s >= threshold], s[s >= threshold])
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class MinHasher:
    """MinHash signatures and LSH band keys of texts."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 0) -> None:
        if not 0 < threshold < 1:
            raise ValueError("threshold must be between 0 and 1")
        self.threshold, self.num_perm, self.ngram = threshold, num_perm, ngram
        self.bands, self.rows = lsh_params(threshold, num_perm)
        rng = np.random.default_rng(seed)
        # multiply-shift hashing: random odd 64-bit multipliers, the top 32 bits of a*x+b mod 2^64
        self.a = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the text's word n-grams (one shingle when it has fewer words)."""
        cache = _TOKEN_IDS  # inline the cache lookup: this is the hot loop of near dedup
        ids = np.array([cache[w] if w in cache else _token_id(w) for w in words(text)], dtype=np.uint64)
        if ids.size == 0:
            return ids
        n = max(ids.size - self.ngram + 1, 1)
        h = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(min(self.ngram, ids.size)):
                h = h * _SHINGLE_MUL + ids[k:k + n]
        return (h >> np.uint64(32)) ^ (h & _MASK32)

    def signature(self, text: str) -> np.ndarray | None:
        """The uint32 MinHash signature (num_perm,), or None for a text without words."""
        sh = np.unique(self.shingles(text))
        if sh.size == 0:
            return None
        sig = np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(0, sh.size, _CHUNK):
                part = (sh[i:i + _CHUNK, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
                np.minimum(sig, part.min(axis=0), out=sig)
        return sig.astype(np.uint32)

    def band_keys(self, sig: np.ndarray | None) -> np.ndarray:
        """One 64-bit key per band (uint64, shape (bands,)); empty for no signature."""
        if sig is None:
            return np.zeros(0, dtype=np.uint64)
        bands = sig[: self.bands * self.rows].reshape(self.bands, self.rows)
        return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
                         for row in bands], dtype=np.uint64)

    def keys(self, text: str) -> np.ndarray:
        return self.band_keys(self.signature(text))


def jaccard(hasher: MinHasher, a: str, b: str) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and audits)."""
    sa, sb = set(hasher.shingles(a).tolist()), set(hasher.shingles(b).tolist())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def band_values(keys: np.ndarray) -> np.ndarray:
    """Band keys as the 64-bit values `pmcllama.data.repeats` counts: band b's key mixed with b,
    so equal keys of different bands stay apart."""
    with np.errstate(over="ignore"):
        return np.asarray(keys, dtype=np.uint64) + _SHINGLE_MUL * np.arange(1, len(keys) + 1, dtype=np.uint64)


class LSHIndex:
    """Band buckets of the documents kept so far; `check(keys, doc_id)` returns the id of
    an earlier document sharing a band (a near-duplicate), else records the document.

    After `restrict(repeated)` only the band keys whose `band_values` occur twice or more in
    the corpus are looked up and recorded (a key seen once can match nothing), so the index
    holds the documents that have a near-duplicate candidate, not every document."""

    def __init__(self, bands: int) -> None:
        self.buckets: list[dict[int, int]] = [{} for _ in range(bands)]
        self.ids: list[str] = []
        self.repeated: np.ndarray | None = None

    def restrict(self, repeated: np.ndarray) -> None:
        self.repeated = repeated

    def check(self, keys: np.ndarray, doc_id: str) -> str | None:
        if keys.size == 0:
            return None
        live = [(bucket, key) for bucket, key, wanted in
                zip(self.buckets, keys.tolist(), self._wanted(keys)) if wanted]
        for bucket, key in live:
            hit = bucket.get(key)
            if hit is not None:
                return self.ids[hit]
        if not live:
            return None
        ordinal = len(self.ids)
        self.ids.append(doc_id)
        for bucket, key in live:
            bucket[key] = ordinal
        return None

    def _wanted(self, keys: np.ndarray) -> list[bool]:
        if self.repeated is None:
            return [True] * keys.size
        return contains(self.repeated, band_values(keys)).tolist()


class NearDedup:
    """Filter step: drop a document whose MinHash shares an LSH band with an earlier kept one
    (reason `near_duplicate`; `last_match` names the earlier document's id). A corpus step in
    two halves, as `ExactDedup`: `key(text)`, the band keys (parallel workers; docs.jsonl
    field `keys`), and `check(keys, doc_id)` (one process, in corpus order); calling it does both."""

    name, field, reason = "near_dedup", "keys", "near_duplicate"

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 0) -> None:
        self.hasher = MinHasher(threshold, num_perm, ngram, seed)
        self.index = LSHIndex(self.hasher.bands)
        self.last_match: str | None = None

    def key(self, text: str) -> list[int]:
        return self.hasher.keys(text).tolist()

    @staticmethod
    def values(keys: list[int]) -> np.ndarray:
        """A document's band keys as the values `pmcllama.data.repeats` counts."""
        return band_values(np.asarray(keys, dtype=np.uint64))

    def restrict(self, repeated: np.ndarray) -> None:
        """Index only band keys whose value is in `repeated` (sorted): no other can match."""
        self.index.restrict(repeated)

    @property
    def indexed(self) -> int:
        """Documents held in the LSH index."""
        return len(self.index.ids)

    def check(self, keys: list[int] | np.ndarray, doc_id: str = "") -> str | None:
        """`near_duplicate` when the keys share a band with a kept document, else None (recorded)."""
        self.last_match = self.index.check(np.asarray(keys, dtype=np.uint64), doc_id)
        return None if self.last_match is None else Drop(self.reason, f"near-duplicate of {self.last_match}")

    def __call__(self, doc) -> str | None:
        return self.check(self.key(doc.text), getattr(doc, "id", ""))
