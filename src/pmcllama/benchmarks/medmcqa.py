"""MedMCQA, from the official files (github.com/medmcqa/medmcqa: `train.json`, `dev.json`).

The official files are JSON Lines despite their `.json` name; a JSON array of the same
records is accepted too. One record::

    {"id": str, "question": str, "opa": str, "opb": str, "opc": str, "opd": str,
     "cop": 1..4, "choice_type": "single"|"multi", "exp": str|null,
     "subject_name": str|null, "topic_name": str|null}

`cop` is the correct option, 1-based in the official files (1 = opa). The Hugging Face copy
(`openlifescienceai/medmcqa`, read by lm-eval) stores it 0-based (0 = opa); the loader
decides per file: any 0 (and no 4) -> 0-based, said in a warning; any 4 (and no 0) ->
1-based; both 0 and 4 -> error; only 1-3 -> read as the official 1-based, with a warning
since such a file cannot tell. A `cop` outside 0..4, a missing field or a duplicate `id`
is an error naming the file and line (a record without `id` is named line-N, or item-N in
an array). The test split has no `cop` (answers withheld): the
paper and lm-eval report the dev split (4,183 questions; a file named dev* of another size
gets a warning with the numbers).

Prompt, template `medmcqa-lmeval-v1`, exactly lm-evaluation-harness's `medmcqa` task
(lm_eval/tasks/medmcqa/utils_medmcqa.py `doc_to_text`, medmcqa.yaml
`doc_to_choice: ['A','B','C','D']`, `doc_to_target: cop`)::

    "Question: " + question + "\\nChoices:\\nA. {opa}\\nB. {opb}\\nC. {opc}\\nD. {opd}\\nAnswer:"

scored continuations " A", " B", " C", " D" (default target delimiter " "). The question
and options are used as they are, without stripping. `subject_name` becomes the item's
subject (per-subject accuracy in results.json).
"""
from __future__ import annotations

from pathlib import Path

from pmcllama.benchmarks.base import (
    ANSWER_PREFIX, Doc, Docs, Loaded, Task, apply_limit, check_unique, json_docs, option_lines, record_id,
)
from pmcllama.errors import UserError
from pmcllama.inputs import need_str

TEMPLATE = "medmcqa-lmeval-v1"
LABELS = ["A", "B", "C", "D"]
OPTIONS = ("opa", "opb", "opc", "opd")
DEV_SIZE = 4183
HF_HINT = " (the Hugging Face copy counts 0-3; the official files count 1-4)"


def build_prompt(question: str, options: list[str]) -> str:
    """lm-eval's medmcqa `doc_to_text`, character for character."""
    return _question_block(question, options) + ANSWER_PREFIX


def _question_block(question: str, options: list[str]) -> str:
    return "Question: " + question + "\nChoices:\n" + option_lines(options)


def docs(path: str | Path, strict: bool = True) -> Docs:
    """The documents of a MedMCQA JSONL (or JSON array) file; the answer letter follows the
    file's cop base (see `cop_base`)."""
    out = json_docs(path, "MedMCQA", _doc, strict, arrays=True)
    cops = [(doc.line, cop_of(doc.record)) for doc in out.good()]
    base, warning = cop_base(path, cops)
    for doc in out.good():
        doc.answer = LABELS[cop_of(doc.record) - base]
    out.warnings += [warning] if warning and cops else []
    return out


def cop_of(rec: dict) -> int:
    cop = rec["cop"]
    return int(cop) if isinstance(cop, str) and cop.strip().isdigit() else cop


def _doc(rec: dict, line: int | None, item: int | None) -> Doc:
    if "cop" not in rec:
        raise ValueError("missing 'cop' (MedMCQA's test split has no answers; use the dev split)")
    cop = cop_of(rec)
    if not isinstance(cop, int) or isinstance(cop, bool) or not 0 <= cop <= 4:
        raise ValueError(f"cop {rec['cop']!r} is not an option number 1-4")
    question = need_str(rec, "question")
    options = {}
    for label, key in zip(LABELS, OPTIONS):
        if key not in rec:
            raise ValueError(f"missing '{key}'")
        if not isinstance(rec[key], str):
            raise ValueError(f"'{key}' is not a string ({type(rec[key]).__name__})")
        options[label] = rec[key]
    exp, subject = rec.get("exp"), rec.get("subject_name")
    return Doc(record_id(rec, line, item), line, item, rec, question, options,
               rationale=exp if isinstance(exp, str) else "",
               subject=subject if isinstance(subject, str) else None)


def cop_base(path: str | Path, cops: list[tuple[int | None, int]]) -> tuple[int, str | None]:
    """0 or 1 (the index of option A) and a warning, from all the file's cop values."""
    zero = next((ln for ln, c in cops if c == 0), -1)
    four = next((ln for ln, c in cops if c == 4), -1)
    if zero != -1 and four != -1:
        raise UserError(f"cop 0 (line {zero}) and cop 4 (line {four}) in one file: it mixes "
                        "0-based (0-3) and 1-based (1-4) answers", path, four)
    if zero != -1:
        return 0, f"{path}: cop is 0-based (0-3, as in the Hugging Face copy): read 0 as A"
    if four != -1:
        return 1, None
    return 1, (f"{path}: every cop is 1, 2 or 3, so the file cannot tell 1-based from 0-based; "
               "read as the official 1-based (1 = A)")


def check_official(doc: Doc) -> None:
    """For the instruction converters, which read the official 1-based files only."""
    if cop_of(doc.record) == 0:
        raise ValueError(f"cop 0 is not an option number 1-4{HF_HINT}")


def question(doc: Doc) -> str:
    return _question_block(doc.question, list(doc.options.values()))


TASK = Task.labelled("medmcqa", question, LABELS)
doc_to_text, doc_to_choice, doc_to_target = TASK.doc_to_text, TASK.doc_to_choice, TASK.doc_to_target


def load(path: str | Path, limit: int | None = None) -> Loaded:
    """Read a MedMCQA JSONL (or JSON array) file into items."""
    found = docs(path)
    if not found:
        raise UserError("benchmark has no items", path)
    seen: dict[str, int] = {}
    for doc in found:
        check_unique(doc.id, seen, path, doc.line)
    items = [TASK.item(doc) for doc in found]
    warnings = list(found.warnings)
    if Path(path).stem.lower() == "dev" and len(items) != DEV_SIZE:
        warnings.append(f"{path}: MedMCQA's dev split has {DEV_SIZE:,} questions; this file has {len(items):,}")
    return Loaded(apply_limit(items, limit, path), TEMPLATE, list(LABELS), warnings)
