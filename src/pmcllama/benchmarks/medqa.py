"""MedQA-USMLE, from the official JSON Lines files (`data_clean/questions/US/*.jsonl`,
4_options or the original 5 options).

One record per line: `{"question": str, "options": {"A": str, "B": str, ...},
"answer_idx": "B", "answer": str, "meta_info": ..., ...}`; an optional `id` field is used
as the item id (else `line-N`, N the 1-based line number). The gold index is that of
`answer_idx`; `answer` (the option text) is only cross-checked, a mismatch is counted as a
warning.

Two prompt styles (`choices`):

- `letters`, template `medqa-letters-lmeval-v1`, as lm-evaluation-harness's
  `medqa_4options` (lm_eval/tasks/medqa/preprocess_medqa.py, `doc_to_text`)::

      "Question: {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"

  scored continuations " A", " B", " C", " D" (`doc_to_choice: [A, B, C, D]` with the
  default target delimiter " "). A 5-option record lists E too and scores " E".
- `text`, template `medqa-text-cloze-v1`: "Question: {question}\\nAnswer:" with the option
  texts as continuations (" " + text), cloze style; the options are not listed.

Split sizes: a file named like an official split (`test.jsonl`, `dev.jsonl`, `train.jsonl`,
or `phrases_no_exclude_test.jsonl`...) whose record count differs from the official US
split (test 1,273, dev 1,272, train 10,178) gets a warning with both numbers.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from pmcllama.benchmarks.base import Item, Loaded, apply_limit, read_objects
from pmcllama.errors import UserError

TEMPLATES = {"letters": "medqa-letters-lmeval-v1", "text": "medqa-text-cloze-v1"}
LETTERS = string.ascii_uppercase
US_SIZES = {"test": 1273, "dev": 1272, "train": 10178}


def letters_prompt(question: str, options: dict[str, str]) -> str:
    listed = "".join(f"{k}. {v}\n" for k, v in options.items())
    return f"Question: {question}\n{listed}Answer:"


def text_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def load(path: str | Path, choices: str = "letters", limit: int | None = None) -> Loaded:
    """Read a MedQA JSONL file into items (`choices`: "letters" or "text")."""
    if choices not in TEMPLATES:
        raise UserError(f"choices must be 'letters' or 'text', not {choices!r}")
    items: list[Item] = []
    seen: dict[str, int] = {}
    mismatched = 0
    width = 0
    for lineno, rec in read_objects(path, "MedQA"):
        item, ok = _item(path, rec, lineno, choices)
        if item.id in seen:
            raise UserError(f"duplicate id '{item.id}' (first on line {seen[item.id]})", path, lineno)
        seen[item.id] = lineno
        mismatched += not ok
        width = max(width, len(item.choices))
        items.append(item)
    warnings = size_warnings(path, len(items))
    if mismatched:
        warnings.append(f"{path}: {mismatched} record(s) whose 'answer' text differs from "
                        "options[answer_idx]; gold follows answer_idx")
    return Loaded(apply_limit(items, limit, path), TEMPLATES[choices], list(LETTERS[:width]), warnings)


def size_warnings(path: str | Path, n: int) -> list[str]:
    """A warning when a file named like an official MedQA-USMLE split has another size."""
    stem = Path(path).stem.lower()
    split = stem.removeprefix("phrases_no_exclude_")
    official = US_SIZES.get(split)
    if official and n != official:
        return [f"{path}: MedQA-USMLE's official {split} split has {official:,} questions; "
                f"this file has {n:,}"]
    return []


def _options(path: str | Path, rec: dict, lineno: int) -> dict[str, str]:
    options = rec.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise UserError("'options' must be an object {A: text, B: text, ...} with 2 or more options",
                        path, lineno)
    keys = sorted(options)
    if keys != list(LETTERS[: len(keys)]):
        raise UserError(f"option keys {', '.join(map(str, options))} are not A, B, C, ... in sequence",
                        path, lineno)
    for k in keys:
        if not isinstance(options[k], str) or not options[k].strip():
            raise UserError(f"option {k} must be a non-empty string", path, lineno)
    return {k: options[k] for k in keys}


def _item(path: str | Path, rec: dict, lineno: int, choices: str) -> tuple[Item, bool]:
    for name in ("question", "options", "answer_idx"):
        if name not in rec:
            raise UserError(f"missing field '{name}'", path, lineno)
    question = rec["question"]
    if not isinstance(question, str) or not question.strip():
        raise UserError("'question' must be a non-empty string", path, lineno)
    options = _options(path, rec, lineno)
    answer = rec["answer_idx"]
    if answer not in options:
        raise UserError(f"answer_idx {answer!r} is not one of the options "
                        f"{', '.join(options)}", path, lineno)
    rid: Any = rec.get("id")
    item_id = str(rid) if isinstance(rid, (str, int)) and str(rid) else f"line-{lineno}"
    keys = list(options)
    if choices == "letters":
        item = Item(item_id, letters_prompt(question, options), [" " + k for k in keys], keys.index(answer))
    else:
        item = Item(item_id, text_prompt(question), [" " + options[k] for k in keys], keys.index(answer))
    text_ok = not isinstance(rec.get("answer"), str) or rec["answer"].strip() == options[answer].strip()
    return item, text_ok
