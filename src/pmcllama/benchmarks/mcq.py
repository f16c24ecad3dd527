"""Generic multiple-choice JSON Lines, for any question set without its own loader.

One record per line::

    {"question": str, "options": [str, ...] or {"A": str, "B": str, ...},
     "answer": 1 | "B" | "<option text>", "id": optional, "subject": optional}

`answer` is read as: an integer -> 0-based option index; a string equal to an option key
(the letters A, B, ... for a list) -> that option; otherwise a string equal to one option's
text -> that option. Anything else is an error naming the file and line. Item ids are `id`
when present, else `line-N`; a repeated id is an error.

Prompts (`choices`), the same as MedQA's so that numbers are comparable:

- `letters`, template `mcq-letters-v1`: "Question: {question}\\nA. {A}\\nB. {B}\\n...Answer:"
  with continuations " A", " B", ... (lm-eval's medqa_4options layout);
- `text`, template `mcq-text-cloze-v1`: "Question: {question}\\nAnswer:" with the option
  texts as continuations.

`SubjectItem` (an `Item` with an optional subject) is shared by the MedMCQA, MMLU and
generic loaders; the evaluate stage reports accuracy per subject when items carry one.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmcllama.benchmarks.base import Item, Loaded, apply_limit, read_objects
from pmcllama.errors import UserError

TEMPLATES = {"letters": "mcq-letters-v1", "text": "mcq-text-cloze-v1"}
LETTERS = string.ascii_uppercase


@dataclass
class SubjectItem(Item):
    """A multiple-choice item that knows its subject (MedMCQA subject_name, MMLU file)."""

    subject: str | None = None


def letters_prompt(question: str, options: list[str], head: str = "") -> str:
    """'{head}{question}\\nA. ..\\nB. ..\\nAnswer:' (lm-eval's letter layout)."""
    listed = "".join(f"{LETTERS[k]}. {v}\n" for k, v in enumerate(options))
    return f"{head}{question}\n{listed}Answer:"


def check_unique(item_id: str, seen: dict[str, int], path: str | Path, line: int | None) -> None:
    if item_id in seen:
        raise UserError(f"duplicate id '{item_id}' (first on line {seen[item_id]})", path, line)
    seen[item_id] = line or 0


def nonempty(rec: dict, key: str, path: str | Path, line: int | None) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"'{key}' must be a non-empty string", path, line)
    return value


def _options(rec: dict, path: str | Path, line: int) -> tuple[list[str], list[str]]:
    """(keys, texts) of a record's options given as a list or a {letter: text} object."""
    options = rec.get("options")
    if isinstance(options, list):
        keys = list(LETTERS[: len(options)])
        texts = options
    elif isinstance(options, dict):
        keys = [str(k) for k in options]
        if sorted(keys) != list(LETTERS[: len(keys)]):
            raise UserError(f"option keys {', '.join(keys)} are not A, B, C, ... in sequence", path, line)
        keys = sorted(keys)
        texts = [options[k] for k in keys]
    else:
        raise UserError("'options' must be a list of strings or an object {A: text, ...}", path, line)
    if not 2 <= len(texts) <= len(LETTERS):
        raise UserError(f"'options' must have 2 to {len(LETTERS)} entries, not {len(texts)}", path, line)
    for k, t in zip(keys, texts):
        if not isinstance(t, str) or not t.strip():
            raise UserError(f"option {k} must be a non-empty string", path, line)
    return keys, texts


def answer_index(answer: Any, keys: list[str], texts: list[str], path: str | Path, line: int) -> int:
    """Gold index from an index, an option key, or an option text."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(texts):
            raise UserError(f"answer index {answer} is outside 0..{len(texts) - 1}", path, line)
        return answer
    if isinstance(answer, str):
        if answer.strip() in keys:
            return keys.index(answer.strip())
        matches = [k for k, t in enumerate(texts) if t.strip() == answer.strip()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"answer {answer!r} matches {len(matches)} options", path, line)
    raise UserError(f"answer {answer!r} is neither an option index (0-based), an option letter "
                    f"({', '.join(keys)}) nor an option's text", path, line)


def load(path: str | Path, choices: str = "letters", limit: int | None = None) -> Loaded:
    """Read a generic MCQ JSONL file into items (`choices`: "letters" or "text")."""
    if choices not in TEMPLATES:
        raise UserError(f"choices must be 'letters' or 'text', not {choices!r}")
    items: list[Item] = []
    seen: dict[str, int] = {}
    width = 0
    for lineno, rec in read_objects(path, "MCQ"):
        for key in ("question", "options", "answer"):
            if key not in rec:
                raise UserError(f"missing field '{key}'", path, lineno)
        question = nonempty(rec, "question", path, lineno)
        keys, texts = _options(rec, path, lineno)
        gold = answer_index(rec["answer"], keys, texts, path, lineno)
        rid = rec.get("id")
        item_id = str(rid) if isinstance(rid, (str, int)) and str(rid) else f"line-{lineno}"
        check_unique(item_id, seen, path, lineno)
        subject = rec.get("subject") if isinstance(rec.get("subject"), str) else None
        if choices == "letters":
            prompt, conts = letters_prompt(question, texts, "Question: "), [" " + k for k in keys]
        else:
            prompt, conts = f"Question: {question}\nAnswer:", [" " + t for t in texts]
        items.append(SubjectItem(item_id, prompt, conts, gold, subject))
        width = max(width, len(texts))
    return Loaded(apply_limit(items, limit, path), TEMPLATES[choices], list(LETTERS[:width]))
