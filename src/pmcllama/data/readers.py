"""Readers: turn input files into a stream of `Document`s.

Each reader yields one `Document` per input document. A record that cannot be read (a
line that is not JSON, a missing text field, bytes that are not UTF-8, an empty file) is
yielded too, with `error` set to a short reason code and `detail` saying what is wrong, so
the caller's policy decides between stopping (a `UserError` naming file and line) and
skipping (the record is written aside and counted). Nothing is dropped silently.

Formats: `text` (one document per file, or per blank-line-separated paragraph), `jsonl`
(one JSON object per line; a `.json` file holding one top-level array also works), `obo`
(an ontology: each selected term becomes one short document).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pmcllama.errors import UserError

SUFFIXES = {"text": (".txt", ".md"), "jsonl": (".jsonl", ".json"), "obo": (".obo",)}
BUILTIN_OBO = "hpo"


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


@dataclass
class InputFile:
    """A resolved input: a file (or the built-in `hpo`), its format, and whether it exists."""

    path: Path
    format: str
    spec: str  # the path as the config gave it (or the folder it was found in)
    missing: bool = False
    problem: str = ""  # why it is missing: "file not found", "no matching files in folder"


def format_of(path: Path, declared: str) -> str | None:
    """The format of a file: the declared one, else by suffix (None when unknown)."""
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    for fmt, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return fmt
    return None


def resolve_paths(paths: list[str], declared: str) -> list[InputFile]:
    """Expand the configured paths: folders are walked (sorted) for files of the format.

    `hpo` means the built-in Human Phenotype Ontology. Missing paths come back with
    `missing=True`; a file whose format cannot be told from its suffix is a UserError.
    """
    from pmcllama.knowledge.ontology import ontology_path

    out: list[InputFile] = []
    for spec in paths:
        if spec == BUILTIN_OBO:
            out.append(InputFile(ontology_path(BUILTIN_OBO), "obo", spec))
            continue
        p = Path(spec).expanduser()
        if p.is_dir():
            found = _walk(p, declared)
            if not found:
                out.append(InputFile(p, declared, spec, True, "no matching files in folder"))
            out.extend(found)
        elif p.is_file():
            fmt = format_of(p, declared)
            if fmt is None:
                raise UserError(
                    f"cannot tell the format from the suffix '{p.suffix}'; set the source's "
                    f"format to one of text, jsonl, obo", p)
            out.append(InputFile(p, fmt, spec))
        else:
            out.append(InputFile(p, format_of(p, declared) or declared, spec, True, "file not found"))
    return out


def _walk(folder: Path, declared: str) -> list[InputFile]:
    found = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).parts
        if not f.is_file() or any(part.startswith(".") for part in rel):
            continue
        fmt = format_of(f, "auto")
        if fmt is not None and (declared == "auto" or fmt == declared):
            found.append(InputFile(f, fmt, str(folder)))
    return found


def _bad(source: str, path: Path, line: int | None, error: str, detail: str) -> Document:
    where = f"{path}:{line}" if line is not None else str(path)
    return Document("", source, where, str(path), line, error, detail)


def _decode(path: Path, source: str, data: bytes) -> str | Document:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return _bad(source, path, line, "not_utf8", f"not UTF-8 text (byte {e.start}: {e.reason})")


def read_text(path: Path, source: str, split_paragraphs: bool = False) -> Iterator[Document]:
    """A text file: one document, or one per blank-line-separated paragraph."""
    text = _decode(path, source, path.read_bytes())
    if isinstance(text, Document):
        yield text
        return
    if not text.strip():
        yield _bad(source, path, None, "empty_file", "file is empty")
        return
    if not split_paragraphs:
        yield Document(text, source, str(path), str(path), 1)
        return
    block: list[str] = []
    start = 1
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield Document("\n".join(block), source, f"{path}:{start}", str(path), start)
            block = []
    if block:
        yield Document("\n".join(block), source, f"{path}:{start}", str(path), start)


def _record(obj: object, path: Path, source: str, lineno: int | None, key: str,
            text_field: str) -> Document:
    if not isinstance(obj, dict):
        return _bad(source, path, lineno, "not_object", f"record is not a JSON object ({type(obj).__name__})")
    if text_field not in obj:
        keys = ", ".join(list(obj)[:8])
        return _bad(source, path, lineno, "missing_text_field",
                    f"record has no '{text_field}' field (fields: {keys})")
    text = obj[text_field]
    if not isinstance(text, str):
        return _bad(source, path, lineno, "text_not_string",
                    f"field '{text_field}' is {type(text).__name__}, not a string")
    doc_id = str(obj["id"]) if obj.get("id") is not None else key
    return Document(text, source, doc_id, str(path), lineno)


def read_jsonl(path: Path, source: str, text_field: str = "text") -> Iterator[Document]:
    """JSON lines: one document per non-blank line, text from `text_field`, id from `id`."""
    if path.suffix.lower() == ".json" and _starts_with(path, b"["):
        yield from _read_json_array(path, source, text_field)
        return
    seen = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                seen = True
                yield _bad(source, path, lineno, "not_utf8", f"line is not UTF-8 text ({e.reason})")
                continue
            if not line.strip():
                continue
            seen = True
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield _bad(source, path, lineno, "bad_json", f"line is not JSON: {e.msg} at column {e.colno}")
                continue
            yield _record(obj, path, source, lineno, f"{path}:{lineno}", text_field)
    if not seen:
        yield _bad(source, path, None, "empty_file", "file has no records")


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(prefix)


def _read_json_array(path: Path, source: str, text_field: str) -> Iterator[Document]:
    text = _decode(path, source, path.read_bytes())
    if isinstance(text, Document):
        yield text
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        yield _bad(source, path, e.lineno, "bad_json", f"file is not JSON: {e.msg} at column {e.colno}")
        return
    if not items:
        yield _bad(source, path, None, "empty_file", "file has no records")
    for i, obj in enumerate(items):
        yield _record(obj, path, source, None, f"{path}#{i}", text_field)


def read_obo_terms(path: Path, source: str, root: str | None, limit: int | None,
                   seed: int) -> Iterator[Document]:
    """Ontology terms (descendants of `root`, `limit` of them, shuffled by `seed`) as documents."""
    from pmcllama.knowledge.ontology import load_ontology, term_document

    onto = load_ontology(path)
    terms = onto.select(root, limit, seed)
    if not terms:
        yield _bad(source, path, None, "empty_file", "no terms with a name and definition selected")
    for term in terms:
        yield Document(term_document(onto, term), source, term.id, str(path), term.line)


def read_file(inp: InputFile, source: str, text_field: str = "text", split_paragraphs: bool = False,
              obo_root: str | None = None, limit: int | None = None, seed: int = 0) -> Iterator[Document]:
    """Documents of one resolved input, by its format."""
    if inp.missing:
        reason = "missing_file" if inp.problem == "file not found" else "no_files"
        yield _bad(source, inp.path, None, reason, inp.problem)
    elif inp.format == "text":
        yield from read_text(inp.path, source, split_paragraphs)
    elif inp.format == "jsonl":
        yield from read_jsonl(inp.path, source, text_field)
    elif inp.format == "obo":
        yield from read_obo_terms(inp.path, source, obo_root, limit, seed)
    else:  # pragma: no cover - formats are validated by the config
        raise UserError(f"unknown format '{inp.format}'", inp.path)
