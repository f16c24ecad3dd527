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

from pathlib import Path
from typing import Any

from pmcllama.benchmarks.base import (
    LETTERS, Doc, Docs, Loaded, apply_limit, check_unique, json_docs, letters_prompt, option_tasks, record_id,
)
from pmcllama.errors import UserError
from pmcllama.inputs import need_str

TEMPLATES = {"letters": "medqa-letters-lmeval-v1", "text": "medqa-text-cloze-v1"}
US_SIZES = {"test": 1273, "dev": 1272, "train": 10178}
__all__ = ["TASKS", "docs", "doc_to_text", "doc_to_choice", "doc_to_target", "letters_prompt", "load"]


def docs(path: str | Path, strict: bool = True) -> Docs:
    """The documents of a MedQA JSONL file."""
    return json_docs(path, "MedQA", _doc, strict)


def _options(rec: dict) -> dict[str, str]:
    options = rec.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise ValueError("'options' must be an object {A: text, B: text, ...} with 2 or more options")
    keys = sorted(options)
    if keys != list(LETTERS[: len(keys)]):
        raise ValueError(f"option keys {', '.join(map(str, options))} are not A, B, C, ... in sequence")
    for k in keys:
        if not isinstance(options[k], str) or not options[k].strip():
            raise ValueError(f"option {k} must be a non-empty string")
    return {k: options[k] for k in keys}


def _doc(rec: dict, line: int | None, item: int | None) -> Doc:
    question = need_str(rec, "question", "missing field '{}'")
    options = _options(rec)
    if "answer_idx" not in rec:
        raise ValueError("missing field 'answer_idx'")
    answer = rec["answer_idx"]
    if not isinstance(answer, str) or answer not in options:
        raise ValueError(f"answer_idx {answer!r} is not one of the options {', '.join(options)}")
    return Doc(record_id(rec, line, item), line, item, rec, question, options, answer)


TASKS = option_tasks("medqa")
doc_to_text, doc_to_choice, doc_to_target = (TASKS["letters"].doc_to_text, TASKS["letters"].doc_to_choice,
                                             TASKS["letters"].doc_to_target)


def load(path: str | Path, choices: str = "letters", limit: int | None = None) -> Loaded:
    """Read a MedQA JSONL file into items (`choices`: "letters" or "text")."""
    if choices not in TEMPLATES:
        raise UserError(f"choices must be 'letters' or 'text', not {choices!r}")
    found = docs(path)
    seen: dict[str, int] = {}
    for doc in found:
        check_unique(doc.id, seen, path, doc.line)
    items = [TASKS[choices].item(doc) for doc in found]
    warnings = size_warnings(path, len(items))
    mismatched = sum(not _answer_text_ok(doc) for doc in found)
    if mismatched:
        warnings.append(f"{path}: {mismatched} record(s) whose 'answer' text differs from "
                        "options[answer_idx]; gold follows answer_idx")
    width = max((len(doc.options) for doc in found), default=0)
    return Loaded(apply_limit(items, limit, path), TEMPLATES[choices], list(LETTERS[:width]), warnings)


def _answer_text_ok(doc: Doc) -> bool:
    text: Any = doc.record.get("answer")
    return not isinstance(text, str) or text.strip() == doc.options[doc.answer].strip()


def size_warnings(path: str | Path, n: int) -> list[str]:
    """A warning when a file named like an official MedQA-USMLE split has another size."""
    stem = Path(path).stem.lower()
    split = stem.removeprefix("phrases_no_exclude_")
    official = US_SIZES.get(split)
    if official and n != official:
        return [f"{path}: MedQA-USMLE's official {split} split has {official:,} questions; "
                f"this file has {n:,}"]
    return []
