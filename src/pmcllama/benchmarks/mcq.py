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

Items carry the record's optional `subject` (as MedMCQA's and MMLU's do); the evaluate
stage reports accuracy per subject when items carry one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pmcllama.benchmarks.base import (
    LETTERS, Doc, Docs, Item, Loaded, apply_limit, check_unique, json_docs, option_tasks, record_id,
)
from pmcllama.errors import UserError
from pmcllama.inputs import need_str

TEMPLATES = {"letters": "mcq-letters-v1", "text": "mcq-text-cloze-v1"}


def _options(rec: dict) -> dict[str, str]:
    """{key: text} of a record's options given as a list or a {letter: text} object."""
    options = rec.get("options")
    if isinstance(options, list):
        keys, texts = list(LETTERS[: len(options)]), options
    elif isinstance(options, dict):
        keys = [str(k) for k in options]
        if sorted(keys) != list(LETTERS[: len(keys)]):
            raise ValueError(f"option keys {', '.join(keys)} are not A, B, C, ... in sequence")
        keys = sorted(keys)
        texts = [options[k] for k in keys]
    else:
        raise ValueError("'options' must be a list of strings or an object {A: text, ...}")
    if not 2 <= len(texts) <= len(LETTERS):
        raise ValueError(f"'options' must have 2 to {len(LETTERS)} entries, not {len(texts)}")
    for k, t in zip(keys, texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"option {k} must be a non-empty string")
    return dict(zip(keys, texts))


def answer_key(answer: Any, options: dict[str, str]) -> str:
    """The gold option's key from an index, an option key, or an option text."""
    keys, texts = list(options), list(options.values())
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(texts):
            raise ValueError(f"answer index {answer} is outside 0..{len(texts) - 1}")
        return keys[answer]
    if isinstance(answer, str):
        if answer.strip() in keys:
            return answer.strip()
        matches = [k for k, t in options.items() if t.strip() == answer.strip()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValueError(f"answer {answer!r} matches {len(matches)} options")
    raise ValueError(f"answer {answer!r} is neither an option index (0-based), an option letter "
                     f"({', '.join(keys)}) nor an option's text")


def _doc(rec: dict, line: int | None, item: int | None) -> Doc:
    for key in ("question", "options", "answer"):
        if key not in rec:
            raise ValueError(f"missing field '{key}'")
    try:
        question = need_str(rec, "question")
    except ValueError:
        raise ValueError("'question' must be a non-empty string") from None
    options = _options(rec)
    subject = rec.get("subject") if isinstance(rec.get("subject"), str) else None
    return Doc(record_id(rec, line, item), line, item, rec, question, options, answer_key(rec["answer"], options),
               subject=subject)


def docs(path: str | Path, strict: bool = True) -> Docs:
    """The documents of a generic MCQ JSONL file."""
    return json_docs(path, "MCQ", _doc, strict)


TASKS = option_tasks("mcq")


def load(path: str | Path, choices: str = "letters", limit: int | None = None) -> Loaded:
    """Read a generic MCQ JSONL file into items (`choices`: "letters" or "text")."""
    if choices not in TEMPLATES:
        raise UserError(f"choices must be 'letters' or 'text', not {choices!r}")
    found = docs(path)
    seen: dict[str, int] = {}
    items: list[Item] = []
    for doc in found:
        check_unique(doc.id, seen, path, doc.line)
        items.append(TASKS[choices].item(doc))
    width = max((len(doc.options) for doc in found), default=0)
    return Loaded(apply_limit(items, limit, path), TEMPLATES[choices], list(LETTERS[:width]))
