"""Reading a user's text files: one wording of errors (file, line, column, what is wrong).

Every whole-file read of a user's text or JSON goes through here, so a file that is missing,
a folder, not UTF-8, or not valid JSON is one `UserError` naming the file and line, never a
traceback.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from pmcllama.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
GZIP_TEXT = "not UTF-8 text: this is a gzip file (decompress it first)"


def utf8_error(data: bytes, err: UnicodeDecodeError) -> tuple[int, str]:
    """(1-based line, description) of a decoding error in `data`."""
    line = data.count(b"\n", 0, err.start) + 1
    if data[:2] == GZIP_MAGIC:
        return line, GZIP_TEXT
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return line, f"not UTF-8 text (column {column}: byte 0x{data[err.start]:02x}, {err.reason})"


def decode(data: bytes, path: str | Path) -> str:
    """`data` as UTF-8 text, or a UserError naming the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, what = utf8_error(data, e)
        raise UserError(what, path, line) from None


def read_text(path: str | Path, what: str = "file", lenient: bool = False) -> str:
    """The whole of a UTF-8 text file (a leading BOM removed). `lenient` keeps bytes that are
    not UTF-8 as escapes, for readers that set the records holding them aside (`bad_utf8`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found", path)
    if path.is_dir():
        raise UserError(f"is a folder; expected a {what}", path)
    data = path.read_bytes()
    if lenient and data[:2] == GZIP_MAGIC:
        raise UserError(GZIP_TEXT, path)
    text = data.decode("utf-8", "surrogateescape") if lenient else decode(data, path)
    return text[1:] if text.startswith("\ufeff") else text


_ESCAPED = re.compile("[\udc80-\udcff]")


def bad_utf8(value: Any) -> str | None:
    """What is wrong with a string (or the strings inside a parsed record) read `lenient`ly."""
    if isinstance(value, str):
        m = _ESCAPED.search(value)
        return None if m is None else \
            f"not UTF-8 text (column {m.start() + 1}: byte 0x{ord(m.group()) - 0xdc00:02x})"
    items = [*value, *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else []
    return next((found for found in map(bad_utf8, items) if found), None)


def printable(text: str) -> str:
    """A leniently read string with its undecodable bytes shown as U+FFFD, safe to write out."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def json_error(e: json.JSONDecodeError) -> str:
    return f"{e.msg.removesuffix(' at')} (column {e.colno})"


def load_json(text: str, path: str | Path, **kwargs) -> Any:
    """`json.loads` of a whole file; a syntax error names the file, line and column."""
    try:
        return json.loads(text, **kwargs)
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON: {json_error(e)}", path, e.lineno) from None
    except RecursionError:
        raise UserError("not valid JSON: nested too deeply", path) from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    return load_json(read_text(path, what), path)


def whole_json(text: str) -> Any:
    """The value of `text` when it is one JSON document, else None (a format sniff)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, is the last line) of each non-empty line. Split on "\n" only, not
    `splitlines`: U+2028 and friends may occur inside JSON strings."""
    lines = text.split("\n")
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield lineno, line, lineno == len(lines)


def iter_jsonl(path: str | Path, what: str = "JSON Lines file", torn_tail_ok: bool = False,
               text: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-empty line (of `text` when given, else of the file).
    With `torn_tail_ok`, a last line without its newline that is not JSON (a writer killed
    mid-line) is left out instead of an error."""
    text = read_text(path, what) if text is None else text
    for lineno, line, last in _lines(text):
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail_ok and last:
                return
            raise UserError(f"line is not valid JSON: {json_error(e)}", path, lineno) from None


def jsonl_rows(path: str | Path, what: str = "JSON Lines file",
               text: str | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, None) of each non-empty line, or (line number, the line shown
    printable, what is wrong) for a line that is not UTF-8 or not JSON: for readers that set bad
    records aside (`on_error: skip`) instead of stopping. `text`: read with `lenient`."""
    text = read_text(path, what, lenient=True) if text is None else text
    for lineno, line, _ in _lines(text):
        if bad := bad_utf8(line):
            yield lineno, printable(line[:1000]), bad
            continue
        try:
            yield lineno, json.loads(line), None
        except json.JSONDecodeError as e:
            yield lineno, line[:1000], f"not valid JSON: {json_error(e)}"


def array_rows(data: list) -> Iterator[tuple[int, Any, str | None]]:
    """(index, value, None) of each element of a leniently read JSON array, or (index, the
    element shown printable, what is wrong) for one holding bytes that are not UTF-8."""
    for i, value in enumerate(data):
        bad = bad_utf8(value)
        yield i, value if bad is None else printable(json.dumps(value, ensure_ascii=False)), bad


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


def need_str(rec: Mapping, key: str, missing: str = "missing '{}'") -> str:
    """rec[key] as it is, or ValueError: missing, not a string, or empty (blank)."""
    if key not in rec:
        raise ValueError(missing.format(key))
    value = rec[key]
    if not isinstance(value, str):
        raise ValueError(f"'{key}' is not a string ({type(value).__name__})")
    if not value.strip():
        raise ValueError(f"empty '{key}'")
    return value
