"""Cleaning: a text normaliser and small composable document steps.

A step is a callable `(doc) -> None` (keep) or a `Drop` (drop: a `str`, the reason, with
its `detail`, what was measured, for the exclusion file; a plain `str` is a drop without
detail). A cleaning step may also rewrite `doc.text` (boilerplate removal) and return None.
Steps run in order and the first reason wins, so every dropped document is counted under
exactly one reason. Stateful steps (deduplication) see only documents every earlier step kept.

    steps = [strip_boilerplate(), too_short(50), english(0.1), repeated_lines(0.3),
             symbol_ratio(0.25), ExactDedup()]
    reason = apply_filters(doc, steps)   # None: keep

Reasons: `too_short`, `not_english`, `repeated_lines`, `symbol_ratio`, `duplicate`.
Boilerplate removal counts removed lines and citation groups in `StripBoilerplate.removed`.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from typing import Callable, Iterable, Protocol

import numpy as np

from pmcllama.data.repeats import contains


class HasText(Protocol):
    text: str


class Drop(str):
    """A step's verdict to drop a document: the reason code (it compares, hashes and counts as
    that `str`) and `detail`, what the step measured: `Drop("too_short", "12 characters < 50")`."""

    detail: str

    def __new__(cls, reason: str, detail: str = "") -> "Drop":
        self = super().__new__(cls, reason)
        self.detail = detail
        return self


def detail_of(reason: str | None) -> str:
    """The detail of a step's verdict ("" for a keep or a plain reason string)."""
    return getattr(reason, "detail", "")


Filter = Callable[[HasText], "str | None"]

_SPACES = re.compile(r"[ \t\f\v]+")
_TRAILING = re.compile(r" ?\n ?")
_NEWLINES = re.compile(r"\n{3,}")
_WORDS = re.compile(r"[^\W\d_]+")
_SPACE_CHARS = re.compile(r"\s")
_SYMBOLS = re.compile(r"[^\w\s]|_")

# the 100 most frequent English function words: prose has 30-50 % of its words among them
STOPWORDS = frozenset("""
a about after all also an and any are as at be been before being between both but by can could
did do does done during each either for from had has have he her here him his how however i if in
into is it its may me more most much must my no nor not now of on once only or other our out over
same she should since so some such than that the their them then there these they this those
through to too under until up upon us very was we were what when where which while who whom why
will with within without would you your
""".split())

_COPYRIGHT = re.compile(
    r"^\s*(?:©|\(c\)\s*\d{4}|copyright\b)|all rights reserved|creative commons|licensed under|"
    r"distributed under the terms of|this (?:article|work|is an open[- ]access article) (?:is|was)? ?"
    r"(?:licensed|published|distributed)|permits unrestricted use|open access article distributed|"
    r"no reuse allowed without permission|for personal use only", re.IGNORECASE)
_YEAR = re.compile(r"\b(?:1[89]|20)\d\d[a-z]?\b")
# a reference-list entry: optional number, then "Surname AB," / "Surname, A. B." (and a year)
_CITATION_LINE = re.compile(r"^\s*(?:\[?\d{1,4}[.\])]\s*)?[A-Z][\w'\u2019-]+,?\s+(?:[A-Z]\.?\s?){1,3}[,.]")
# (Smith et al., 2003; Jones et al. 2005) or [Smith et al., 2003] inside prose
_CITATION_GROUP = re.compile(r"\s?[(\[][^()\[\]\n]{0,400}?\bet al\b\.?[^()\[\]\n]{0,400}?[)\]]")


def normalize(text: str) -> str:
    """Unicode NFC, unified line ends, runs of spaces/tabs -> one space, spaces around line
    breaks removed, at most two consecutive newlines, stripped."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _NEWLINES.sub("\n\n", text)
    return text.strip()


def too_short(min_chars: int) -> Filter:
    """Drop documents shorter than `min_chars` characters (reason `too_short`)."""

    def check(doc: HasText) -> str | None:
        n = len(doc.text)
        return Drop("too_short", f"{n} characters < {min_chars}") if n < min_chars else None

    check.__name__ = f"too_short({min_chars})"
    return check


def stopword_ratio(text: str) -> tuple[float, int]:
    """(share of words that are English function words, number of words)."""
    words = _WORDS.findall(text.lower())
    if not words:
        return 0.0, 0
    return sum(w in STOPWORDS for w in words) / len(words), len(words)


def english(min_ratio: float = 0.1, min_words: int = 30) -> Filter:
    """Drop documents that do not read as English (reason `not_english`): fewer than
    `min_ratio` of their words are English function words. Documents with fewer than
    `min_words` words are not judged (a title or a term definition is too short to tell)."""

    def check(doc: HasText) -> str | None:
        ratio, n = stopword_ratio(doc.text)
        if n >= min_words and ratio < min_ratio:
            return Drop("not_english", f"English function words {ratio:.3f} of {n} words < {min_ratio}")
        return None

    check.__name__ = f"english({min_ratio})"
    return check


def repeated_line_fraction(text: str) -> float:
    """Share of the non-blank lines that repeat an earlier line (stripped, case-folded)."""
    seen: set[str] = set()
    lines = repeats = 0
    for line in text.split("\n"):
        key = line.strip().casefold()
        if not key:
            continue
        lines += 1
        if key in seen:
            repeats += 1
        seen.add(key)
    return repeats / lines if lines else 0.0


def repeated_lines(max_fraction: float = 0.3, min_lines: int = 4) -> Filter:
    """Drop documents in which more than `max_fraction` of the lines repeat an earlier one
    (reason `repeated_lines`): navigation menus, running headers, scraped tables. Documents
    of fewer than `min_lines` lines are not judged."""

    def check(doc: HasText) -> str | None:
        if doc.text.count("\n") + 1 < min_lines:
            return None
        frac = repeated_line_fraction(doc.text)
        return Drop("repeated_lines", f"repeated lines {frac:.3f} > {max_fraction}") if frac > max_fraction else None

    check.__name__ = f"repeated_lines({max_fraction})"
    return check


def symbol_fraction(text: str) -> float:
    """Share of the non-space characters that are neither letters nor digits."""
    chars = len(text) - len(_SPACE_CHARS.findall(text))
    if chars <= 0:
        return 0.0
    return len(_SYMBOLS.findall(text)) / chars


def symbol_ratio(max_fraction: float = 0.25) -> Filter:
    """Drop documents whose non-space characters are more than `max_fraction` symbols
    (reason `symbol_ratio`): markup, tables of numbers with separators, encoding debris."""

    def check(doc: HasText) -> str | None:
        frac = symbol_fraction(doc.text)
        return Drop("symbol_ratio", f"symbols {frac:.3f} of non-space characters > {max_fraction}") \
            if frac > max_fraction else None

    check.__name__ = f"symbol_ratio({max_fraction})"
    return check


class StripBoilerplate:
    """Cleaning step: remove copyright / licence lines, runs of `min_run` or more consecutive
    citation lines (reference-list entries: "1. Smith J, Jones K. ... 2001"), and parenthetical
    "et al." citation groups inside prose. Never drops a document itself (an emptied one is
    dropped by the length check after it); counts what it removed in `removed`."""

    def __init__(self, min_run: int = 3, inline_citations: bool = True) -> None:
        self.min_run = min_run
        self.inline = inline_citations
        self.removed: Counter = Counter()
        self._kept = 0

    def _drop_group(self, m: re.Match) -> str:
        if _YEAR.search(m.group(0)):
            return ""
        self._kept += 1  # "(Smith et al.)" without a year: prose, left alone
        return m.group(0)

    def _is_citation(self, line: str) -> bool:
        return len(line) < 600 and bool(_CITATION_LINE.match(line)) and bool(_YEAR.search(line))

    def clean(self, text: str) -> str:
        lines = text.split("\n")
        keep = [not (len(line) < 400 and _COPYRIGHT.search(line)) for line in lines]
        self.removed["licence_lines"] += keep.count(False)
        i = 0
        while i < len(lines):
            j = i
            while j < len(lines) and keep[j] and self._is_citation(lines[j]):
                j += 1
            if j - i >= self.min_run:
                keep[i:j] = [False] * (j - i)
                self.removed["citation_lines"] += j - i
            i = max(j, i + 1)
        text = "\n".join(line for line, k in zip(lines, keep) if k)
        if self.inline and "et al" in text:
            text, n = _CITATION_GROUP.subn(self._drop_group, text)
            self.removed["inline_citations"] += n - self._kept
            self._kept = 0
        return _NEWLINES.sub("\n\n", text).strip()

    def __call__(self, doc: HasText) -> None:
        doc.text = self.clean(doc.text)
        return None


def _first_word(digest: bytes) -> np.ndarray:
    return np.frombuffer(digest[:8], dtype=np.uint64)


class ExactDedup:
    """Drop a document whose (normalised) text was seen before (reason `duplicate`).

    Keeps a 16-byte digest per distinct text it was given, so memory grows with the number
    of documents, not their size; after `restrict(repeated)` (the corpus merge, see
    `pmcllama.data.repeats`) only the digests that occur twice or more in the corpus. One
    instance shared by several sources dedups across them. A corpus step in two halves (as
    `NearDedup` and `Decontaminate`): `key(text)`, computed by parallel workers and stored in
    the part's docs.jsonl under `field` (the hex digest), and `check(key, doc_id)`, run by one
    process in corpus order; calling it does both.
    """

    name, field, reason = "exact_dedup", "digest", "duplicate"

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.repeated: np.ndarray | None = None  # the digests' first 8 bytes that occur twice or more

    @staticmethod
    def key(text: str) -> str:
        return text_digest(text).hex()

    @staticmethod
    def values(key: str) -> np.ndarray:
        """The key as the 64-bit value `pmcllama.data.repeats` counts (the digest's first 8 bytes)."""
        return _first_word(bytes.fromhex(key))

    def restrict(self, repeated: np.ndarray) -> None:
        """Remember only digests whose value is in `repeated` (sorted): no other can recur."""
        self.repeated = repeated

    @property
    def indexed(self) -> int:
        """Digests held in memory."""
        return len(self.seen)

    def check(self, key: str, doc_id: str = "") -> str | None:
        """`duplicate` when the digest was seen before, else None (and the digest is recorded)."""
        digest = bytes.fromhex(key)
        if self.repeated is not None and not contains(self.repeated, _first_word(digest))[0]:
            return None
        if digest in self.seen:
            return self.reason
        self.seen.add(digest)
        return None

    def __call__(self, doc: HasText) -> str | None:
        return self.check(self.key(doc.text))


def text_digest(text: str) -> bytes:
    """16-byte blake2b digest of a text (the exact-duplicate key)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def quality_steps(min_chars: int, boilerplate: bool = True, citation_run: int = 3,
                  inline_citations: bool = True, language: str | None = None, min_stopword_ratio: float = 0.1,
                  language_min_words: int = 30, max_repeated_lines: float | None = 0.3,
                  max_symbol_ratio: float | None = 0.25) -> tuple[list[Filter], StripBoilerplate | None]:
    """The cleaning and quality steps in their order, and the boilerplate step (for its counts)."""
    strip = StripBoilerplate(citation_run, inline_citations) if boilerplate else None
    steps: list[Filter] = [strip] if strip else []
    steps.append(too_short(min_chars))
    if language == "en":
        steps.append(english(min_stopword_ratio, language_min_words))
    if max_repeated_lines is not None:
        steps.append(repeated_lines(max_repeated_lines))
    if max_symbol_ratio is not None:
        steps.append(symbol_ratio(max_symbol_ratio))
    return steps, strip


def apply_filters(doc: HasText, filters: Iterable[Filter], stats=None) -> str | None:
    """The first drop reason among `filters`, or None when every filter keeps `doc`; with
    `stats` (a `pmcllama.data.step_stats.StepStats`) each step is timed and its verdict counted."""
    for f in filters:
        reason = f(doc) if stats is None else stats.run(f, doc)
        if reason is not None:
            return reason
    return None
