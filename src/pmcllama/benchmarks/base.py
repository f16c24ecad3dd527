"""What every benchmark loader returns: multiple-choice items plus how they were built.

An `Item` is one question: a prompt, the continuations to score (each with its leading
space, e.g. " yes" or " A"), and the index of the gold continuation. A loader returns a
`Loaded` benchmark: the items, the prompt template's version string (written beside every
result so numbers made with different prompts are never compared by mistake), and the
label of each choice index for the tables.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmcllama.errors import UserError
from pmcllama.inputs import iter_jsonl, load_json, read_text, whole_json


@dataclass
class Item:
    """One multiple-choice question."""

    id: str
    prompt: str
    choices: list[str]
    gold: int

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()


@dataclass
class Loaded:
    """A loaded benchmark: items, template version, choice labels, and data warnings."""

    items: list[Item]
    template: str
    labels: list[str]
    warnings: list[str] = field(default_factory=list)


def line_of(text: str, needle: str, occurrence: int = 1) -> int | None:
    """1-based line of the n-th occurrence of `needle` in `text` (None if absent)."""
    pos = -1
    for _ in range(occurrence):
        pos = text.find(needle, pos + 1)
        if pos < 0:
            return None
    return text.count("\n", 0, pos) + 1


def parse_json_document(path: str | Path, text: str) -> tuple[Any, list[str]]:
    """Parse a whole-file JSON document; also return the duplicated keys of the top object."""
    calls: list[list[str]] = []

    def hook(pairs):
        seen: set[str] = set()
        dups = []
        for key, _ in pairs:
            if key in seen:
                dups.append(key)
            seen.add(key)
        calls.append(dups)  # the top-level object is the last one closed
        return dict(pairs)

    data = load_json(text, path, object_pairs_hook=hook)
    top_dups = calls[-1] if calls and isinstance(data, dict) else []
    return data, top_dups


def looks_like_pubmedqa(obj: Any) -> bool:
    """A {pmid: {QUESTION, CONTEXTS, ...}} mapping, as in PubMedQA's ori_pqal.json."""
    if not isinstance(obj, dict) or not obj:
        return False
    first = next(iter(obj.values()))
    return isinstance(first, dict) and "QUESTION" in first


def looks_like_jsonl(text: str) -> bool:
    """True when the first non-empty line is a complete JSON object on its own."""
    first = next((line for line in text.split("\n") if line.strip()), None)
    return first is not None and isinstance(whole_json(first), dict)


def wrong_layout(path: str | Path, data: Any, what: str) -> None:
    """Explain a file that is one JSON document where JSON Lines of `what` records were expected."""
    if looks_like_pubmedqa(data):
        raise UserError(f"this is PubMedQA's ori_pqal.json layout ({{pmid: record}}), not {what} "
                        "JSON Lines; use format: pubmedqa", path)
    raise UserError(f"this is one JSON document, not JSON Lines (one {what} record per line)", path)


def read_objects(path: str | Path, what: str, text: str | None = None) -> list[tuple[int, dict]]:
    """(line number, object) of every non-empty line of a JSON Lines benchmark file; a file
    that is one JSON document (PubMedQA's layout, an array) is an error saying so."""
    text = read_text(path) if text is None else text
    rows: list[tuple[int, dict]] = []
    try:
        for lineno, rec in iter_jsonl(path, text=text):
            if not isinstance(rec, dict):
                raise UserError(f"expected a JSON object, got a {type(rec).__name__}", path, lineno)
            if not rows and looks_like_pubmedqa(rec) and "question" not in rec:
                wrong_layout(path, rec, what)
            rows.append((lineno, rec))
    except UserError as e:
        if not rows and (data := whole_json(text)) is not None and "JSON object" not in e.reason:
            wrong_layout(path, data, what)
        raise
    return rows


def duplicate_warning(items: list[Item], path: str | Path) -> str | None:
    """A warning naming the questions that occur more than once (same prompt and choices)."""
    groups: dict[tuple, list[str]] = {}
    for item in items:
        groups.setdefault((item.prompt, tuple(item.choices)), []).append(
            item.id.replace("line-", "line ", 1) if item.id.startswith("line-") else f"id {item.id}")
    repeated = [g for g in groups.values() if len(g) > 1]
    if not repeated:
        return None
    extra = sum(len(g) - 1 for g in repeated)
    shown = "; ".join(" = ".join(g) for g in repeated[:5]) + ("; ..." if len(repeated) > 5 else "")
    return (f"{path}: {len(repeated)} question(s) occur more than once ({extra} extra cop"
            f"{'y' if extra == 1 else 'ies'}, each scored as a separate item): {shown}")


def apply_limit(items: list[Item], limit: int | None, path: str | Path) -> list[Item]:
    if not items:
        raise UserError("benchmark has no items", path)
    return items[:limit] if limit else items
