"""The document and the input file, shared by the readers of every format and the corpus stage.

`Document` is what a reader yields: one input document, or one unreadable record (`error`
set) or unwanted one (`drop` set); `InputFile` is one resolved input of a source. The helpers
make the unreadable-record documents every format reader yields (`bad_record`) and decode a
file's bytes (`decode`: a `not_utf8` record naming the line when they are not UTF-8).
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pmcllama.errors import UserError
from pmcllama.inputs import json_error, utf8_error


@dataclass
class Document:
    """One input document (or one unreadable record, when `error` is set)."""

    text: str
    source: str
    id: str
    file: str
    line: int | None = None
    error: str | None = None  # reason code of an unreadable record, e.g. "bad_json"
    detail: str = ""  # what is wrong, for the error message and the exclusion file
    metadata: dict = field(default_factory=dict)  # pmcid, pmid, doi, journal, year, mesh, ...
    drop: str | None = None  # reason code of a readable record that is not wanted, e.g. "no_abstract"


@dataclass
class InputFile:
    """A resolved input: a file (or the built-in `hpo`), its format, and whether it exists."""

    path: Path
    format: str
    spec: str  # the path as the config gave it (or the folder it was found in)
    missing: bool = False
    problem: str = ""  # why it is missing: "file not found", "no matching files in folder"
    line: int | None = None  # where an `.xml` file whose kind could not be told is broken
    shard: str = ""  # S2ORC 2020 layout: "metadata" or "pdf_parses" (the kind of shard), else ""
    paired: Path | None = None  # read with `path` in the same job: a metadata shard's pdf_parses shard

    def paths(self) -> list[Path]:
        """The files this input reads: its path, and its paired file when it has one."""
        return [self.path] + ([self.paired] if self.paired is not None else [])


def suffix_of(path: Path) -> str:
    """The file's suffix, compound ones (`.xml.gz`, `.tar.gz`) included, lower case."""
    name = path.name.lower()
    for compound in (".xml.gz", ".tar.gz", ".jsonl.gz", ".json.gz"):
        if name.endswith(compound):
            return compound
    return path.suffix.lower()


def bad_record(source: str, path: Path, line: int | None, error: str, detail: str) -> Document:
    """The document of an unreadable record: `error` its reason code, `detail` what is wrong."""
    where = f"{path}:{line}" if line is not None else str(path)
    return Document("", source, where, str(path), line, error, detail)


def stop_error(doc: Document) -> UserError:
    """The error that stops a run at an unreadable record (`on_error: stop`): file and line."""
    return UserError(f"source '{doc.source}': {doc.detail}", doc.file, doc.line)


def decode(path: Path, source: str, data: bytes) -> str | Document:
    """The file's bytes as text, or a `not_utf8` record naming the line where they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, what = utf8_error(data, e)
        return bad_record(source, path, line, "not_utf8", what)


def jsonl_records(path: Path, source: str) -> Iterator[tuple[int, object] | Document]:
    """(line number, JSON value) of every non-blank line of a JSON Lines file, gzipped when its
    name ends in .gz, read as a stream; an unreadable record's Document (`not_utf8`, `bad_json`,
    `bad_gzip`, `empty_file`) in place of a bad line. The corpus readers' one JSONL loop."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    seen = False
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                seen = True
                try:
                    yield lineno, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield bad_record(source, path, lineno, "not_utf8", f"line is not UTF-8 text ({e.reason})")
                except json.JSONDecodeError as e:
                    yield bad_record(source, path, lineno, "bad_json", f"line is not JSON: {json_error(e)}")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        yield bad_record(source, path, lineno + 1, "bad_gzip", f"truncated or corrupt gzip after line {lineno}: {e}")
        return
    if not seen:
        yield bad_record(source, path, None, "empty_file", "file has no records")
