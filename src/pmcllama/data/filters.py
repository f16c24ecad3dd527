"""Cleaning: a text normaliser and small composable document filters.

A filter is a callable `(doc) -> None` (keep) or `str` (drop, with that reason). Filters
run in order and the first reason wins, so every dropped document is counted under exactly
one reason. Stateful filters (deduplication) see only documents every earlier filter kept.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Callable, Iterable, Protocol


class HasText(Protocol):
    text: str


Filter = Callable[[HasText], "str | None"]

_SPACES = re.compile(r"[ \t\f\v]+")
_TRAILING = re.compile(r" ?\n ?")
_NEWLINES = re.compile(r"\n{3,}")


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
        return "too_short" if len(doc.text) < min_chars else None

    check.__name__ = f"too_short({min_chars})"
    return check


class ExactDedup:
    """Drop a document whose (normalised) text was seen before (reason `duplicate`).

    Keeps a 16-byte digest per distinct text, so memory grows with the number of documents,
    not their size. One instance shared by several sources dedups across them.
    """

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def __call__(self, doc: HasText) -> str | None:
        digest = hashlib.blake2b(doc.text.encode("utf-8"), digest_size=16).digest()
        if digest in self.seen:
            return "duplicate"
        self.seen.add(digest)
        return None


def apply_filters(doc: HasText, filters: Iterable[Filter]) -> str | None:
    """The first drop reason among `filters`, or None when every filter keeps `doc`."""
    for f in filters:
        reason = f(doc)
        if reason is not None:
            return reason
    return None
