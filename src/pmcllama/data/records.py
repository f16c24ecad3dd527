"""Instruction source files -> chat records ({id, source, task, messages}), and the `Rejects`
policy object shared by every reader of the instruction stage (see `pmcllama.instructions`).

Readers take a source config (`data.sources.InstructionSource`), honour its `max_records`,
and send every malformed record to `Rejects`: an error naming file and line (on_error=stop)
or a row of rejected.jsonl (skip). A file whose first record fails and that looks like
another format is an error naming both formats, whatever the policy.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pmcllama.data import dialogue, qa
from pmcllama.data.dialogue import alpaca_items as _alpaca_items, check_alpaca as _check_alpaca
from pmcllama.data.qa import QA_FORMATS
from pmcllama.data.sources import InstructionSource
from pmcllama.errors import UserError


class Rejects:
    """Malformed records: an error (on_error=stop) or a row of rejected.jsonl (skip)."""

    def __init__(self, policy: str):
        self.policy, self.rows, self.counts = policy, [], Counter()

    def add(self, source: str, path: Path, line: int | None, item: int | None, reason: str, raw: Any) -> None:
        if self.policy == "stop":
            where = f"item {item}: " if item is not None else ""
            raise UserError(f"{where}{reason} (on_error=skip sets such records aside)", path, line)
        self.rows.append({"source": source, "path": str(path), "line": line, "item": item,
                          "reason": reason, "record": raw})
        self.counts[source] += 1


def messages(system: str | None, user: str, answer: str) -> list[dict]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def check_format(src: InstructionSource, path: Path, line: int | None, error: str | None) -> None:
    """A file whose first record fails (or, for the generic qa_jsonl, any file) and that looks
    like another format: an error naming both formats, whatever `on_error` says."""
    if error is None and src.format != "qa_jsonl":
        return
    found = dialogue.sniff_format(path)
    if found and found != src.format and (error is not None or found in QA_FORMATS):
        why = f" (first record: {error})" if error else ""
        raise UserError(f"source '{src.name}' declares format: {src.format}, but the file looks like {found}"
                        f"{why}; set format: {found}", path, line)


def read_alpaca(src: InstructionSource, system: str | None, rejects: Rejects) -> list[dict]:
    """Chat records of an alpaca source (at most `max_records`)."""
    records: list[dict] = []
    for name in src.paths:
        path = Path(name)
        for n, (line, item, obj, error) in enumerate(_alpaca_items(path)):
            if error is None:
                try:
                    instruction, inp, output = _check_alpaca(obj)
                except ValueError as e:
                    error = str(e)
            if error is not None:
                if n == 0:
                    check_format(src, path, line, error)
                rejects.add(src.name, path, line, item, error, obj)
                continue
            user = instruction + ("\n\n" + inp if inp and instruction else inp)
            task = src.task if src.task != "auto" else ("dialogue" if inp else "qa")
            records.append({"id": f"{src.name}-{len(records)}", "source": src.name, "task": task,
                            "messages": messages(system, user, output),
                            "_alpaca": {"instruction": instruction, "input": inp, "output": output}})
            if src.max_records and len(records) >= src.max_records:
                return records
    return records


def _rows(src: InstructionSource, path: Path):
    """qa.Row's whose value is a QAItem (benchmark formats) or a qa.Converted record."""
    if src.format in QA_FORMATS:
        return qa.read_items(src.format, path)
    if src.format == "mtsdialog":
        return dialogue.read_mtsdialog(path)
    if src.format == "qa_jsonl":
        return dialogue.read_qa_jsonl(path, src.question_field, src.answer_field)
    return dialogue.read_chat(path, src.format)


def read_converted(src: InstructionSource, system: str | None, rejects: Rejects) -> list[dict]:
    """Chat records of a benchmark-QA, dialogue or consumer-QA source (at most `max_records`).
    QA records keep their item (`_qa`) so that a rationale can be added later."""
    records: list[dict] = []
    ids: Counter = Counter()
    for name in src.paths:
        path = Path(name)
        for n, row in enumerate(_rows(src, path)):
            if n == 0:
                check_format(src, path, row.line, row.error)
            if row.error is not None:
                rejects.add(src.name, path, row.line, row.item, row.error, row.raw)
                continue
            item = row.value if isinstance(row.value, qa.QAItem) else None
            conv = item.converted(src.answer_format) if item else row.value
            key = f"{src.name}-{path.stem}-{conv.id}" if len(src.paths) > 1 else f"{src.name}-{conv.id}"
            ids[key] += 1
            own_system = conv.turns[0]["role"] == "system"
            turns = conv.turns if own_system or not system else [{"role": "system", "content": system}, *conv.turns]
            records.append({"id": key if ids[key] == 1 else f"{key}-{ids[key]}", "source": src.name,
                            "task": conv.task, "messages": turns,
                            **({"_qa": item, "_answer_format": src.answer_format} if item else {})})
            if src.max_records and len(records) >= src.max_records:
                return records
    return records
