"""What every benchmark format shares: documents, the task that renders them, and items.

The benchmark-document layer, in lm-evaluation-harness's vocabulary: a format module's
`docs(path)` reads a file into `Doc`s (the record as read, where it is - file line or array
element - and its fields: question, options, answer, contexts, rationale, subject; or what is
wrong with it), and its `Task` renders a document as lm-eval does: `doc_to_text` (the
zero-shot text, ending in "Answer:"), `doc_to_choice` (the choice labels or texts) and
`doc_to_target` (the gold index), after the task `description` (MMLU's subject header).
Evaluation, the instruction converters (`pmcllama.data.qa`) and decontamination
(`pmcllama.data.decontam`) all read benchmark files through `docs`.

An `Item` is one question ready to score: a prompt, the continuations to score (each with
its leading space, e.g. " yes" or " A"), the index of the gold continuation, and the document
and task it was rendered from (so few-shot and chain-of-thought prompts are rendered from the
document again, not edited). A loader returns a `Loaded` benchmark: the items, the prompt
template's version string (written beside every result so numbers made with different prompts
are never compared by mistake), and the label of each choice index for the tables.
"""
from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from pmcllama.errors import UserError
from pmcllama.inputs import array_rows, iter_jsonl, jsonl_rows, load_json, read_text, whole_json

LETTERS = string.ascii_uppercase
ANSWER_PREFIX = "Answer:"


@dataclass
class Doc:
    """One benchmark document as read: its fields, or what is wrong with it (`error`)."""

    id: str
    line: int | None
    item: int | None = None  # index in a JSON array
    record: Any = None  # the record as read (an object, CSV fields, or the line shown printable)
    question: str = ""
    options: dict[str, str] = field(default_factory=dict)  # label -> text, as in the file
    answer: str = ""  # an option label, or PubMedQA's yes/no/maybe
    contexts: list[str] = field(default_factory=list)
    rationale: str = ""
    subject: str | None = None
    error: str | None = None


class Docs(list):
    """The documents of one file, and its data warnings. `strict`: a bad document is a
    UserError naming the file and line at once (evaluation, decontamination); else it stays
    in the list with its `error` (the instruction converters' `on_error: skip`)."""

    def __init__(self, path: str | Path, strict: bool = True):
        super().__init__()
        self.path, self.strict, self.warnings = path, strict, []

    def add(self, doc: Doc) -> None:
        if doc.error is not None and self.strict:
            raise UserError(doc.error, self.path, doc.line)
        self.append(doc)

    def good(self) -> list[Doc]:
        return [d for d in self if d.error is None]


def letters_block(question: str, options: Sequence[str] | Mapping[str, str], head: str = "Question: ") -> str:
    """'{head}{question}\nA. ..\nB. ..\n': lm-eval's letter layout before "Answer:"; options
    as a list (labelled A, B, ...) or as {label: text}."""
    return f"{head}{question}\n" + option_lines(options)


def option_lines(options: Sequence[str] | Mapping[str, str]) -> str:
    """'A. ..\nB. ..\n' of a list (labelled A, B, ...) or of {label: text}."""
    pairs = options.items() if isinstance(options, Mapping) else zip(LETTERS, options)
    return "".join(f"{k}. {v}\n" for k, v in pairs)


def letters_prompt(question: str, options: Sequence[str] | Mapping[str, str], head: str = "Question: ") -> str:
    """lm-eval's letter layout: '{head}{question}\nA. ..\nB. ..\nAnswer:'."""
    return letters_block(question, options, head) + ANSWER_PREFIX


@dataclass(frozen=True)
class Task:
    """How a format renders a document, as an lm-eval task: `question` is the text before
    "Answer:", `doc_to_choice` the labels (or texts) scored after the target delimiter " "."""

    name: str
    question: Callable[[Doc], str]
    doc_to_choice: Callable[[Doc], list[str]]
    doc_to_target: Callable[[Doc], int]
    description: Callable[[Doc], str] = lambda doc: ""
    target_delimiter: str = " "

    @classmethod
    def labelled(cls, name: str, question: Callable[[Doc], str], labels: Sequence[str], **kw) -> "Task":
        """A task whose choices are fixed labels (A-D, yes/no/maybe) and whose `doc.answer` is one."""
        return cls(name, question, lambda doc: list(labels), lambda doc: list(labels).index(doc.answer), **kw)

    def doc_to_text(self, doc: Doc) -> str:
        return self.question(doc) + ANSWER_PREFIX

    def item(self, doc: Doc, item_id: str | None = None) -> "Item":
        return Item(item_id or doc.id, self.description(doc) + self.doc_to_text(doc),
                    [self.target_delimiter + c for c in self.doc_to_choice(doc)], self.doc_to_target(doc),
                    doc.subject, doc, self)


def option_tasks(name: str) -> dict[str, Task]:
    """The two renderings of records with lettered options (MedQA, generic MCQ): `letters`
    (lm-eval's medqa_4options: the options listed, letters scored) and `text` (cloze: the
    option texts scored)."""
    def target(doc: Doc) -> int:
        return list(doc.options).index(doc.answer)

    return {"letters": Task(name, lambda doc: letters_block(doc.question, doc.options),
                            lambda doc: list(doc.options), target),
            "text": Task(f"{name}-text", lambda doc: f"Question: {doc.question}\n",
                         lambda doc: list(doc.options.values()), target)}


@dataclass
class Item:
    """One multiple-choice question (and the document and task it was rendered from)."""

    id: str
    prompt: str
    choices: list[str]
    gold: int
    subject: str | None = None
    doc: Doc | None = field(default=None, compare=False, repr=False)
    task: Task | None = field(default=None, compare=False, repr=False)

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


def _one_document(path: str | Path, text: str, what: str, arrays: bool) -> None:
    """Explain a file that is one JSON document where JSON Lines of `what` records are expected."""
    whole = whole_json(text) if text.lstrip()[:1] in "[{" else None
    if whole is None:
        return
    what = f"{what} " if what else ""
    if looks_like_pubmedqa(whole):
        raise UserError(f"this is PubMedQA's ori_pqal.json layout ({{pmid: record}}), not {what}JSON "
                        "Lines; use format: pubmedqa", path)
    if len([ln for ln in text.split("\n") if ln.strip()]) > 1:
        kind = "object" if isinstance(whole, dict) else "document"
        raise UserError(f"one JSON {kind} over several lines; expected JSON Lines (one {what}record a line)"
                        + (" or a JSON array of records" if arrays else ""), path)


def json_records(path: str | Path, what: str, arrays: bool = False, strict: bool = True
                 ) -> Iterator[tuple[int | None, int | None, Any, str | None]]:
    """(line, array index, value, error) of each record of a JSON Lines file of `what` records
    (or, with `arrays`, of a file holding one JSON array; an element's line is that of its
    "id" string). `strict`: a line that is not UTF-8 or not JSON is a UserError (else a row
    with its error and the line shown printable)."""
    text = read_text(path) if strict else read_text(path, lenient=True)
    if arrays and text.lstrip().startswith("["):
        seen: dict[str, int] = {}
        for i, value, error in array_rows(load_json(text, path)):
            rid = value.get("id") if isinstance(value, dict) else None
            seen[str(rid)] = seen.get(str(rid), 0) + 1  # the n-th element with this id
            yield line_of(text, json.dumps(rid), seen[str(rid)]) if isinstance(rid, str) else None, i, value, error
        return
    _one_document(path, text, what, arrays)
    rows = ((n, v, None) for n, v in iter_jsonl(path, text=text)) if strict else jsonl_rows(path, text=text)
    for line, value, error in rows:
        yield line, None, value, error


def json_docs(path: str | Path, what: str, parse: Callable[[dict, int | None, int | None], Doc],
              strict: bool = True, arrays: bool = False) -> Docs:
    """The documents of a JSON Lines (or, with `arrays`, JSON array) file of `what` records;
    `parse` turns a record (an object) into a Doc or raises ValueError saying what is wrong."""
    out = Docs(path, strict)
    for line, item, rec, error in json_records(path, what, arrays, strict):
        if error is None and not isinstance(rec, dict):
            kind = type(rec).__name__
            error = f"expected a JSON object, got a {kind}" if item is None else \
                f"element {item} is a {kind}, expected an object"
        doc = Doc(f"line-{line}", line, item, rec, error=error)
        if error is None:
            try:
                doc = parse(rec, line, item)
            except ValueError as e:
                doc.error = str(e)
        out.add(doc)
    return out


def record_id(rec: dict, line: int | None, item: int | None) -> str:
    """A record's `id` (a non-empty string or integer), else line-N (JSON Lines) or item-N (array)."""
    rid = rec.get("id")
    if isinstance(rid, (str, int)) and str(rid):
        return str(rid)
    return f"line-{line}" if item is None else f"item-{item}"


def check_unique(item_id: str, seen: dict[str, int], path: str | Path, line: int | None) -> None:
    if item_id in seen:
        raise UserError(f"duplicate id '{item_id}' (first on line {seen[item_id]})", path, line)
    seen[item_id] = line or 0


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
