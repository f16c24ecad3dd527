"""Benchmark-format QA -> chat turns: MedQA-USMLE, MedMCQA, PubMedQA, MMLU.

Readers of the official layouts:
- `medqa`:    JSONL, {question, options: {A: .., B: .., ...}, answer_idx, [id]},
- `medmcqa`:  JSON array or JSON Lines (the official .json files are JSON Lines),
              {id, question, opa, opb, opc, opd, cop (1-4), exp, subject_name},
- `pubmedqa`: `ori_pqal.json`, {pmid: {QUESTION, CONTEXTS, final_decision, LONG_ANSWER}},
- `mmlu`:     headerless CSV, question,A,B,C,D,answer (a letter).

Every reader yields `Row`s: (line, item index, raw record, QAItem or None, error or None), so
the caller decides between stopping and skipping (instructions' `on_error`). `QAItem.reply`
words the answer in one of three formats:
- `paper` (PMC-LLaMA): "###Rationale: <rationale>\\n\\n###Answer: OPTION C IS CORRECT." (the
  rationale part only when the data has one: MedMCQA `exp`, PubMedQA `LONG_ANSWER`);
  PubMedQA: "###Answer: yes",
- `letter`: "C. <option text>" (PubMedQA: "yes"),
- `letter_rationale`: "<rationale>\\n\\nThe answer is C. <option text>" (no rationale: the
  last sentence alone).
The user turn is the question followed by one "X. option" line per option (as the KG
prompts), or for PubMedQA the abstract, the question and "Answer yes, no or maybe.".
"""
from __future__ import annotations

import csv
import io
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from pmcllama.benchmarks.base import line_of, looks_like_jsonl, looks_like_pubmedqa, parse_json_document
from pmcllama.inputs import array_rows, bad_utf8, jsonl_rows, load_json, printable, read_text, whole_json
from pmcllama.errors import UserError

QA_FORMATS = ("medqa", "medmcqa", "pubmedqa", "mmlu")
ANSWER_FORMATS = ("paper", "letter", "letter_rationale")
LETTERS = string.ascii_uppercase
PUBMEDQA_LABELS = ("yes", "no", "maybe")


class Row(NamedTuple):
    """One input record: where it is, what it was, and what it became (or why not)."""

    line: int | None
    item: int | None
    raw: Any
    value: Any = None
    error: str | None = None


class Converted(NamedTuple):
    """A converted record: its id within the file, task label and chat turns (no system turn
    unless the data has its own)."""

    id: str
    task: str
    turns: list[dict]


@dataclass
class QAItem:
    id: str
    question: str
    options: dict[str, str]  # empty for PubMedQA
    answer: str  # an option letter, or yes/no/maybe
    rationale: str = ""
    contexts: list[str] = field(default_factory=list)

    def prompt(self) -> str:
        if not self.options:
            return f"{' '.join(self.contexts)}\n\nQuestion: {self.question}\nAnswer yes, no or maybe."
        return self.question + "\n" + "\n".join(f"{k}. {v}" for k, v in self.options.items())

    def reply(self, answer_format: str) -> str:
        if self.options:
            short, paper = f"{self.answer}. {self.options[self.answer]}", f"OPTION {self.answer} IS CORRECT."
        else:
            short = paper = self.answer
        if answer_format == "letter":
            return short
        if answer_format == "letter_rationale":
            end = "" if short.endswith((".", "!", "?")) else "."
            return (self.rationale + "\n\n" if self.rationale else "") + f"The answer is {short}{end}"
        if answer_format == "paper":
            return (f"###Rationale: {self.rationale}\n\n" if self.rationale else "") + f"###Answer: {paper}"
        raise ValueError(f"unknown answer_format {answer_format!r}")

    def texts(self) -> list[str]:
        """The item's text for decontamination: the question (+ PubMedQA's contexts)."""
        return [self.question, *self.contexts]

    def converted(self, answer_format: str) -> Converted:
        return Converted(self.id, "qa", [{"role": "user", "content": self.prompt()},
                                         {"role": "assistant", "content": self.reply(answer_format)}])


# ----------------------------------------------------------------------------- generic file readers


def json_records(path: Path) -> Iterator[Row]:
    """Rows of a JSON array (file starting with '[') or of JSON Lines (any other file)."""
    text = read_text(path, lenient=True)
    if text.lstrip().startswith("["):
        for i, obj, bad in array_rows(load_json(text, path)):
            yield Row(None, i, obj, error=bad)
        return
    whole = whole_json(text) if text.lstrip().startswith("{") else None
    if whole is not None:
        if looks_like_pubmedqa(whole):
            raise UserError("this is PubMedQA's ori_pqal.json layout ({pmid: record}); use format: pubmedqa", path)
        if len([ln for ln in text.split("\n") if ln.strip()]) > 1:
            raise UserError("one JSON object over several lines; expected JSON Lines (one record a line) "
                            "or a JSON array of records", path)
    for n, value, error in jsonl_rows(path, text=text):
        yield Row(n, None, value, error=error)


def csv_rows(path: Path) -> Iterator[tuple[int, list[str], str | None]]:
    """(first line, fields, error) of every CSV record (quoted fields may span lines). The error
    is None, or says the record holds bytes that are not UTF-8, or that it is cut off (the
    file ends inside a quoted field: a truncated file)."""
    text = read_text(path, lenient=True)
    reader = csv.reader(io.StringIO(text, newline=""))
    start, last = 1, None
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                if last is not None:
                    yield _csv_record(*last)
                last = (start, fields, bad_utf8(fields))
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserError(f"not valid CSV: {e}", path, reader.line_num) from None
    if last is not None:
        cut = text.split("\n", last[0] - 1)[-1].count('"') % 2 == 1
        yield _csv_record(last[0], last[1], "the record is cut off: the file ends inside a quoted "
                          "field (truncated file?)" if cut else last[2])


def _csv_record(start: int, fields: list[str], error: str | None) -> tuple[int, list[str], str | None]:
    return start, fields if error is None else [printable(f) for f in fields], error


def need_str(obj: dict, key: str, allow_empty: bool = False) -> str:
    """obj[key] stripped, or ValueError naming what is wrong."""
    if key not in obj:
        raise ValueError(f"missing '{key}'")
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"'{key}' is not a string ({type(value).__name__})")
    if not value.strip() and not allow_empty:
        raise ValueError(f"empty '{key}'")
    return value.strip()


def _object(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"a record must be a JSON object, not {type(obj).__name__}")
    return obj


def _item_id(obj: dict, row: Row) -> str:
    rid = obj.get("id")
    if isinstance(rid, (str, int)) and str(rid):
        return str(rid)
    return f"line-{row.line}" if row.line is not None else f"item-{row.item}"


# ----------------------------------------------------------------------------- per format


def medqa_item(obj: Any, item_id: str) -> QAItem:
    obj = _object(obj)
    question = need_str(obj, "question")
    options = obj.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise ValueError("'options' must be an object {A: text, B: text, ...} with 2 or more options")
    keys = sorted(options)
    if keys != list(LETTERS[:len(keys)]):
        raise ValueError(f"option keys {', '.join(map(str, options))} are not A, B, C, ... in sequence")
    opts = {k: need_str(options, k) for k in keys}
    answer = obj.get("answer_idx")
    if answer not in opts:
        raise ValueError(f"answer_idx {answer!r} is not one of the options {', '.join(keys)}")
    return QAItem(item_id, question, opts, answer)


def medmcqa_item(obj: Any, item_id: str) -> QAItem:
    obj = _object(obj)
    question = need_str(obj, "question")
    opts = {k: need_str(obj, f"op{k.lower()}") for k in "ABCD"}
    cop = obj.get("cop")
    if isinstance(cop, str) and cop.strip().isdigit():
        cop = int(cop)
    if not isinstance(cop, int) or isinstance(cop, bool) or not 1 <= cop <= 4:
        hint = " (the Hugging Face copy counts 0-3; the official files count 1-4)" if cop == 0 else ""
        raise ValueError(f"cop {cop!r} is not an option number 1-4{hint}")
    exp = obj.get("exp")
    return QAItem(item_id, question, opts, "ABCD"[cop - 1], exp.strip() if isinstance(exp, str) else "")


def pubmedqa_item(obj: Any, item_id: str) -> QAItem:
    obj = _object(obj)
    question = need_str(obj, "QUESTION")
    contexts = obj.get("CONTEXTS")
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise ValueError("CONTEXTS must be a list of strings")
    label = obj.get("final_decision")
    if label not in PUBMEDQA_LABELS:
        raise ValueError(f"final_decision {label!r} is not one of yes, no, maybe")
    long = obj.get("LONG_ANSWER")
    return QAItem(item_id, question, {}, label, long.strip() if isinstance(long, str) else "",
                  [c.strip() for c in contexts if c.strip()])


def _json_items(path: Path, build) -> Iterator[Row]:
    for row in json_records(path):
        if row.error is not None:
            yield row
            continue
        try:
            item_id = _item_id(row.raw, row) if isinstance(row.raw, dict) else str(row.item)
            yield row._replace(value=build(row.raw, item_id))
        except ValueError as e:
            yield row._replace(error=str(e))


def read_medqa(path: Path) -> Iterator[Row]:
    return _json_items(path, medqa_item)


def read_medmcqa(path: Path) -> Iterator[Row]:
    return _json_items(path, medmcqa_item)


def read_pubmedqa(path: Path) -> Iterator[Row]:
    text = read_text(path)
    if looks_like_jsonl(text) and whole_json(text) is None:
        raise UserError("this is JSON Lines (one record per line), not PubMedQA's ori_pqal.json layout "
                        "{pmid: {QUESTION, CONTEXTS, final_decision}}", path)
    data, _ = parse_json_document(path, text)
    if not isinstance(data, dict) or not looks_like_pubmedqa(data):
        raise UserError("not PubMedQA's ori_pqal.json layout {pmid: {QUESTION, CONTEXTS, final_decision}}", path)
    for pmid, rec in data.items():
        row = Row(line_of(text, f'"{pmid}"'), None, rec)
        try:
            yield row._replace(value=pubmedqa_item(rec, str(pmid)))
        except ValueError as e:
            yield row._replace(error=f"pmid {pmid}: {e}")


def read_mmlu(path: Path) -> Iterator[Row]:
    for line, fields, error in csv_rows(path):
        row = Row(line, None, fields, error=error)
        if error:
            yield row
        elif len(fields) != 6:
            yield row._replace(error=f"{len(fields)} columns, expected 6 (question,A,B,C,D,answer)")
            continue
        question, *options, answer = (f.strip() for f in fields)
        if not question:
            yield row._replace(error="empty question")
        elif not all(options):
            yield row._replace(error="empty option")
        elif answer not in ("A", "B", "C", "D"):
            yield row._replace(error=f"answer {answer!r} is not one of A, B, C, D")
        else:
            yield row._replace(value=QAItem(f"line-{line}", question, dict(zip("ABCD", options)), answer))


READERS = {"medqa": read_medqa, "medmcqa": read_medmcqa, "pubmedqa": read_pubmedqa, "mmlu": read_mmlu}


def read_items(fmt: str, path: str | Path) -> Iterator[Row]:
    """Rows whose value is a QAItem, of a file in a benchmark format."""
    return READERS[fmt](Path(path))


def detect_format(path: str | Path) -> str | None:
    """The benchmark format of a file from its name and first record (None: unknown)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        first = next(csv_rows(path), None)
        return "mmlu" if first and len(first[1]) == 6 and first[1][5].strip() in ("A", "B", "C", "D") else None
    text = read_text(path)
    if text.lstrip().startswith("{") and looks_like_pubmedqa(whole_json(text)):
        return "pubmedqa"
    first = next((r.raw for r in json_records(path) if r.error is None), None)
    if isinstance(first, dict):
        if "options" in first and "answer_idx" in first:
            return "medqa"
        if "opa" in first and "cop" in first:
            return "medmcqa"
        if "question" in first:
            return "jsonl"
    return None
