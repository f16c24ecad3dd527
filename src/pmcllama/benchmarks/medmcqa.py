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
is an error naming the file and line. The test split has no `cop` (answers withheld): the
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

import json
from pathlib import Path

from pmcllama.benchmarks.base import Loaded, apply_limit, line_of, read_objects
from pmcllama.inputs import load_json, read_text
from pmcllama.benchmarks.mcq import SubjectItem, check_unique, nonempty
from pmcllama.errors import UserError

TEMPLATE = "medmcqa-lmeval-v1"
LABELS = ["A", "B", "C", "D"]
OPTIONS = ("opa", "opb", "opc", "opd")
DEV_SIZE = 4183


def build_prompt(question: str, options: list[str]) -> str:
    """lm-eval's medmcqa `doc_to_text`, character for character."""
    listed = "".join(f"{k}. {v}\n" for k, v in zip(LABELS, options))
    return "Question: " + question + "\nChoices:\n" + listed + "Answer:"


def _records(path: str | Path) -> list[tuple[int | None, dict]]:
    text = read_text(path)
    if text.lstrip().startswith("["):
        data = load_json(text, path)
        if not isinstance(data, list):
            raise UserError("expected JSON Lines or a JSON array of MedMCQA records", path)
        rows, count = [], {}
        for k, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise UserError(f"element {k} is a {type(rec).__name__}, expected an object", path)
            rid = rec.get("id")
            count[str(rid)] = count.get(str(rid), 0) + 1  # the n-th record with this id
            line = line_of(text, json.dumps(rid), count[str(rid)]) if isinstance(rid, str) else None
            rows.append((line, rec))
        return rows
    return read_objects(path, "MedMCQA", text)


def _cop_base(path: str | Path, cops: list[tuple[int | None, int]]) -> tuple[int, str | None]:
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


def load(path: str | Path, limit: int | None = None) -> Loaded:
    """Read a MedMCQA JSONL (or JSON array) file into items."""
    rows = _records(path)
    parsed, seen, cops = [], {}, []
    for line, rec in rows:
        if "cop" not in rec:
            raise UserError("missing field 'cop' (MedMCQA's test split has no answers; use the "
                            "dev split)", path, line)
        for key in ("id", "question") + OPTIONS:
            if key not in rec:
                raise UserError(f"missing field '{key}'", path, line)
        cop = rec["cop"]
        if isinstance(cop, str) and cop.strip().isdigit():
            cop = int(cop)
        if not isinstance(cop, int) or isinstance(cop, bool) or not 0 <= cop <= 4:
            raise UserError(f"cop {rec['cop']!r} is not an option number 1-4 (or 0-3)", path, line)
        item_id = str(rec["id"])
        check_unique(item_id, seen, path, line)
        options = []
        for key in OPTIONS:
            value = rec[key]
            if not isinstance(value, str):
                raise UserError(f"'{key}' must be a string", path, line)
            options.append(value)
        question = nonempty(rec, "question", path, line)
        subject = rec.get("subject_name") if isinstance(rec.get("subject_name"), str) else None
        parsed.append((item_id, question, options, subject))
        cops.append((line, cop))
    if not parsed:
        raise UserError("benchmark has no items", path)
    base, warning = _cop_base(path, cops)
    items = [SubjectItem(i, build_prompt(q, opts), [" " + x for x in LABELS], cop - base, subj)
             for (i, q, opts, subj), (_, cop) in zip(parsed, cops)]
    warnings = [warning] if warning else []
    if Path(path).stem.lower() == "dev" and len(items) != DEV_SIZE:
        warnings.append(f"{path}: MedMCQA's dev split has {DEV_SIZE:,} questions; this file has {len(items):,}")
    return Loaded(apply_limit(items, limit, path), TEMPLATE, list(LABELS), warnings)
