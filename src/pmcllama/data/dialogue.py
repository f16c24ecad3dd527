"""Dialogues and consumer-health QA -> chat turns.

- `mtsdialog`: MTS-Dialog CSV (ID, section_header, section_text, dialogue): the user turn is
  the doctor-patient dialogue followed by an instruction to write that section of the
  clinical note; the answer is `section_text`.
- `sharegpt`: JSON array or JSON Lines of {conversations: [{from: human|gpt|system, value}]},
  every turn kept.
- `messages`: OpenAI chat JSONL, {messages: [{role: system|user|assistant, content}]}.
- `qa_jsonl`: consumer-health QA JSONL with configurable fields; by default `question` or
  `Question` and `answer` or `Answer` (MedQuAD, MedicationQA).

`alpaca_items`/`check_alpaca` read Alpaca {instruction, input, output} files (ChatDoctor).
A conversation must alternate user and assistant turns (after an optional system turn),
starting with the user and ending with the assistant. Readers yield `qa.Row`s whose value
is a `qa.Converted` record, or an error for the caller's on_error policy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from pmcllama.data.qa import Converted, Row, csv_rows, detect_format, json_records, need_str
from pmcllama.errors import UserError
from pmcllama.inputs import array_rows, jsonl_rows, load_json, read_text

MTS_COLUMNS = ("ID", "section_header", "section_text", "dialogue")
MTS_SECTIONS = {
    "GENHX": "history of present illness", "CC": "chief complaint", "ROS": "review of systems",
    "PASTMEDICALHX": "past medical history", "PASTSURGICAL": "past surgical history",
    "FAM/SOCHX": "family and social history", "MEDICATIONS": "medications", "ALLERGY": "allergies",
    "ASSESSMENT": "assessment", "EXAM": "physical examination", "DIAGNOSIS": "diagnosis",
    "DISPOSITION": "disposition", "PLAN": "plan", "EDCOURSE": "emergency department course",
    "IMMUNIZATIONS": "immunizations", "IMAGING": "imaging", "GYNHX": "gynecologic history",
    "PROCEDURES": "procedures", "OTHER_HISTORY": "other history", "LABS": "laboratory results",
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "assistant": "assistant", "system": "system"}
QUESTION_FIELDS = ("question", "Question")
ANSWER_FIELDS = ("answer", "Answer")


# ----------------------------------------------------------------------------- alpaca


def alpaca_items(path: Path) -> Iterator[tuple[int | None, int | None, Any, str | None]]:
    """(line, item index, value, error) for every record of a .json array or .jsonl file."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise UserError("an alpaca source file must be .json (an array) or .jsonl", path)
    text = read_text(path, lenient=True)
    if suffix == ".jsonl":
        for n, value, error in jsonl_rows(path, text=text):
            yield n, None, value, error
        return
    try:
        data = load_json(text, path)
    except UserError as e:
        yield e.line, None, None, e.reason
        return
    if not isinstance(data, list):
        yield None, None, None, f"a .json source must be an array of records, not a {type(data).__name__}"
        return
    for i, value, error in array_rows(data):
        yield None, i, value, error


def check_alpaca(obj: Any) -> tuple[str, str, str]:
    """(instruction, input, output) of a record, or ValueError naming what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"a record must be a JSON object, not {type(obj).__name__}")
    for key in ("instruction", "output"):
        if key not in obj:
            raise ValueError(f"missing '{key}'")
    values = []
    for key in ("instruction", "input", "output"):
        value = obj.get(key)
        value = "" if value is None and key == "input" else value
        if not isinstance(value, str):
            raise ValueError(f"'{key}' is not a string ({type(value).__name__})")
        values.append(value.strip())
    if not values[2]:
        raise ValueError("empty output")
    if not values[0] and not values[1]:
        raise ValueError("empty instruction and input")
    return values[0], values[1], values[2]


# ----------------------------------------------------------------------------- mts-dialog


def mts_instruction(header: str) -> str:
    section = MTS_SECTIONS.get(header.strip().upper(), header.strip().lower())
    return f"Write the {section} section of the clinical note for this doctor-patient conversation."


def read_mtsdialog(path: str | Path) -> Iterator[Row]:
    path = Path(path)
    rows = csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise UserError("empty CSV file", path)
    if first[2]:
        raise UserError(f"header: {first[2]}", path, first[0])
    columns = [c.strip().lstrip("\ufeff") for c in first[1]]
    missing = [c for c in MTS_COLUMNS[1:] if c not in columns]
    if missing:
        raise UserError(f"not an MTS-Dialog CSV: header lacks {', '.join(missing)} "
                        f"(expected {','.join(MTS_COLUMNS)})", path, first[0])
    for line, fields, error in rows:
        rec = dict(zip(columns, fields))
        row = Row(line, None, rec)
        if error:
            yield row._replace(error=error)
        elif len(fields) != len(columns):
            yield row._replace(error=f"{len(fields)} columns, the header has {len(columns)}")
            continue
        try:
            header, text, dialogue = (need_str(rec, k) for k in MTS_COLUMNS[1:])
        except ValueError as e:
            yield row._replace(error=str(e))
            continue
        item_id = rec.get("ID", "").strip() or f"line-{line}"
        turns = [{"role": "user", "content": f"{dialogue}\n\n{mts_instruction(header)}"},
                 {"role": "assistant", "content": text}]
        yield row._replace(value=Converted(item_id, "dialogue", turns))


def check_turns(turns: list[dict]) -> list[dict]:
    """Turns as given, or ValueError: [system], then user/assistant alternating, ending on assistant."""
    body = turns[1:] if turns and turns[0]["role"] == "system" else turns
    if not body:
        raise ValueError("no user or assistant turn")
    for i, turn in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != want:
            raise ValueError(f"turn {i + len(turns) - len(body)} is {turn['role']}, expected {want} "
                             "(turns must alternate user/assistant after an optional system turn)")
    if body[-1]["role"] != "assistant":
        raise ValueError("the last turn is not an assistant answer")
    return turns


def _text(value: Any, where: str) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(value) or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"{where}: only text content parts are supported")
        value = "".join(parts)
    if not isinstance(value, str):
        raise ValueError(f"{where}: content is not a string ({type(value).__name__})")
    if not value.strip():
        raise ValueError(f"{where}: empty content")
    return value.strip()


def sharegpt_turns(obj: Any) -> list[dict]:
    if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
        raise ValueError("a ShareGPT record must be an object with a 'conversations' list")
    turns = []
    for i, t in enumerate(obj["conversations"]):
        if not isinstance(t, dict) or t.get("from") not in SHAREGPT_ROLES:
            got = t.get("from") if isinstance(t, dict) else t
            raise ValueError(f"turn {i}: 'from' is {got!r}, expected human, gpt or system")
        turns.append({"role": SHAREGPT_ROLES[t["from"]], "content": _text(t.get("value"), f"turn {i}")})
    return check_turns(turns)


def openai_turns(obj: Any) -> list[dict]:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise ValueError("a record must be an object with a 'messages' list")
    turns = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            got = m.get("role") if isinstance(m, dict) else m
            raise ValueError(f"message {i}: role is {got!r}, expected system, user or assistant")
        turns.append({"role": m["role"], "content": _text(m.get("content"), f"message {i}")})
    return check_turns(turns)


def _record_id(obj: Any, row: Row) -> str:
    for key in ("id", "qid"):
        rid = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(rid, (str, int)) and str(rid).strip():
            return str(rid).strip()
    return f"line-{row.line}" if row.line is not None else f"item-{row.item}"


def read_chat(path: str | Path, fmt: str) -> Iterator[Row]:
    """`fmt`: sharegpt or messages."""
    path = Path(path)
    convert = sharegpt_turns if fmt == "sharegpt" else openai_turns
    for row in json_records(path):
        if row.error is not None:
            yield row
            continue
        try:
            yield row._replace(value=Converted(_record_id(row.raw, row), "dialogue", convert(row.raw)))
        except ValueError as e:
            yield row._replace(error=str(e))


def _pick(obj: dict, given: str | None, defaults: tuple[str, ...]) -> str:
    if given is not None:
        return need_str(obj, given)
    for key in defaults:
        if key in obj:
            return need_str(obj, key)
    raise ValueError(f"missing '{defaults[0]}' (or {', '.join(repr(k) for k in defaults[1:])}; "
                     "set question_field/answer_field for other layouts)")


def read_qa_jsonl(path: str | Path, question_field: str | None = None,
                  answer_field: str | None = None) -> Iterator[Row]:
    """Consumer QA: one user question, one answer."""
    path = Path(path)
    for row in json_records(path):
        if row.error is not None:
            yield row
            continue
        try:
            if not isinstance(row.raw, dict):
                raise ValueError(f"a record must be a JSON object, not {type(row.raw).__name__}")
            question = _pick(row.raw, question_field, QUESTION_FIELDS)
            answer = _pick(row.raw, answer_field, ANSWER_FIELDS)
        except ValueError as e:
            yield row._replace(error=str(e))
            continue
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        yield row._replace(value=Converted(_record_id(row.raw, row), "qa", turns))


# ----------------------------------------------------------------------------- format sniffing

_KEYS = (("alpaca", ("instruction", "output")), ("sharegpt", ("conversations",)), ("messages", ("messages",)),
         ("medqa", ("options", "answer_idx")), ("medmcqa", ("opa", "cop")))


def sniff_format(path: str | Path) -> str | None:
    """The instruction format a file looks like, from its first record (None: cannot tell).
    Used to explain a file given under the wrong format."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            first = next(csv_rows(path), None)
            if first and {"section_header", "dialogue"} <= {c.strip().lstrip("\ufeff") for c in first[1]}:
                return "mtsdialog"
            return detect_format(path)
        fmt = detect_format(path)
        if fmt not in (None, "jsonl"):
            return fmt
        first = next((r.raw for r in json_records(path) if r.error is None), None)
    except (UserError, StopIteration):
        return None
    if not isinstance(first, dict):
        return None
    for name, keys in _KEYS:
        if all(k in first for k in keys):
            return name
    return "qa_jsonl" if any(k in first for k in QUESTION_FIELDS) and any(k in first for k in ANSWER_FIELDS) else None
