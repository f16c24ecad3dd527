"""Benchmark-format QA -> chat turns: MedQA-USMLE, MedMCQA, PubMedQA, MMLU.

The files are read by the benchmark modules' `docs` (`pmcllama.benchmarks.<format>`: the
same documents evaluation scores and decontamination indexes), leniently, so that a bad record
becomes a `Row` with its error and the caller decides between stopping and skipping
(instructions' `on_error`). `read_items` turns each document into a `QAItem` (texts stripped;
a document with an empty option, or a MedMCQA answer counted from 0, is refused: the official
files count 1-4). Rows are (line, item index, raw record, QAItem or None, error or None);
`json_records` reads the generic JSON files (arrays or JSON Lines) of the chat formats.

`QAItem.reply` words the answer in one of three formats:
- `paper` (PMC-LLaMA): "###Rationale: <rationale>\n\n###Answer: OPTION C IS CORRECT." (the
  rationale part only when the data has one: MedMCQA `exp`, PubMedQA `LONG_ANSWER`);
  PubMedQA: "###Answer: yes",
- `letter`: "C. <option text>" (PubMedQA: "yes"),
- `letter_rationale`: "<rationale>\n\nThe answer is C. <option text>" (no rationale: the
  last sentence alone).
The user turn is the question followed by one "X. option" line per option (as the KG
prompts), or for PubMedQA the abstract, the question and "Answer yes, no or maybe.".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from pmcllama import inputs
from pmcllama.benchmarks import medmcqa, medqa, mmlu, pubmedqa
from pmcllama.benchmarks.base import Doc, json_records as benchmark_records, looks_like_pubmedqa
from pmcllama.inputs import csv_rows, read_text, whole_json

FORMATS = {"medqa": medqa, "medmcqa": medmcqa, "pubmedqa": pubmedqa, "mmlu": mmlu}
QA_FORMATS = tuple(FORMATS)
ANSWER_FORMATS = ("paper", "letter", "letter_rationale")


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

    def converted(self, answer_format: str) -> Converted:
        return Converted(self.id, "qa", [{"role": "user", "content": self.prompt()},
                                         {"role": "assistant", "content": self.reply(answer_format)}])


# ----------------------------------------------------------------------------- generic JSON records


def json_records(path: Path) -> Iterator[Row]:
    """Rows of a JSON array (file starting with '[') or of JSON Lines (any other file), read
    leniently: a line that is not UTF-8 or not JSON is a row with its error."""
    for line, item, value, error in benchmark_records(path, "", arrays=True, strict=False):
        yield Row(line, item, value, error=error)


def need_str(obj: dict, key: str) -> str:
    """obj[key] stripped, or ValueError naming what is wrong."""
    return inputs.need_str(obj, key).strip()


# ----------------------------------------------------------------------------- benchmark formats


def qa_item(fmt: str, doc: Doc) -> QAItem:
    """A benchmark document as an instruction item (texts stripped), or ValueError when it
    cannot be one: an empty option, or a MedMCQA answer counted from 0."""
    if fmt == "medmcqa":
        medmcqa.check_official(doc)
    if not all(v.strip() for v in doc.options.values()):
        raise ValueError("empty option")
    return QAItem(doc.id, doc.question.strip(), {k: v.strip() for k, v in doc.options.items()}, doc.answer,
                  doc.rationale.strip(), [c.strip() for c in doc.contexts if c.strip()])


def read_items(fmt: str, path: str | Path) -> Iterator[Row]:
    """Rows whose value is a QAItem, of a file in a benchmark format (its `docs`, leniently)."""
    for doc in FORMATS[fmt].docs(Path(path), strict=False):
        row = Row(doc.line, doc.item, doc.record, error=doc.error)
        if doc.error is None:
            try:
                row = row._replace(value=qa_item(fmt, doc))
            except ValueError as e:
                row = row._replace(error=f"pmid {doc.id}: {e}" if fmt == "pubmedqa" else str(e))
        yield row


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
