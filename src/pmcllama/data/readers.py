"""Readers: turn input files into a stream of `Document`s.

Each reader yields one `Document` per input document. A record that cannot be read (a
line that is not JSON, a missing text field, bytes that are not UTF-8, an empty file) is
yielded too, with `error` set to a short reason code and `detail` saying what is wrong, so
the caller's policy decides between stopping (a `UserError` naming file and line) and
skipping (the record is written aside and counted). Nothing is dropped silently.

A record that is read fine but is not wanted (a MEDLINE citation without an abstract, an
S2ORC paper without a PMC id) is yielded with `drop` set: it is always excluded and counted,
whatever the error policy. Events that are not documents (a MEDLINE DeleteCitation, a tar
member that is not XML) are counted in the `events` Counter a caller may pass.

Formats: `text` (one document per file, or per blank-line-separated paragraph), `jsonl`
(one JSON object per line; a `.json` file holding one top-level array also works), `obo`
(an ontology: each selected term becomes one short document), `jats` (PubMed Central full
text, see `pmcllama.data.jats`), `medline` (PubMed citations, `pmcllama.data.medline`),
`s2orc` (S2ORC JSONL, `pmcllama.data.s2orc`; never chosen by suffix alone), `textbook`
(.txt/.md/.pdf books cleaned of page furniture) and `parquet` (rows with a text field), see
`pmcllama.data.textbook`. JSONL may be gzipped (`.jsonl.gz`, `.json.gz`: RedPajama/FineWeb).

A folder walk reads the files of the source's format. The other files it meets are not read
but listed (path, reason code, detail) in the `skipped` list a caller may pass, which the
corpus stage reports as `skipped_inputs`: files of another type (`other_format`), `.xml`
of the other kind (`other_xml`: JATS in a MEDLINE source) and licence/readme files
(`not_data`: LICENSE*, LICENCE*, COPYING*, README*, NOTICE*, which describe the data, they
are not part of it). Hidden files and folders (`.name`) are neither read nor listed.

S2ORC's 2020 release comes as `metadata_N` and `pdf_parses_N` shards: `resolve_paths`
pairs them (`pmcllama.data.s2orc.pair_shards`) into one `InputFile` whose `paired` file is
read with it, so the two halves of a shard always go to the same job.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Iterator

from pmcllama.data.corpus_config import CorpusSource
from pmcllama.data.document import (Document, InputFile, bad_record as _bad, decode as _decode, jsonl_records,
                                    suffix_of)
from pmcllama.errors import UserError
from pmcllama.inputs import json_error

SUFFIXES = {"text": (".txt", ".md"), "jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz"), "obo": (".obo",),
            "textbook": (".txt", ".md", ".pdf"), "parquet": (".parquet",),
            "jats": (".nxml", ".tar.gz", ".tgz", ".xml"), "medline": (".xml.gz", ".xml"),
            "s2orc": (".jsonl", ".jsonl.gz", ".json.gz", ".gz")}
# suffix -> format when the format is "auto"; ".xml" is told by its root element, s2orc is never guessed
AUTO = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl", ".obo": "obo",
        ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".pdf": "textbook", ".parquet": "parquet",
        ".nxml": "jats", ".tar.gz": "jats", ".tgz": "jats", ".xml.gz": "medline"}
XML_ROOTS = {"article": "jats", "pmc-articleset": "jats", "PubmedArticleSet": "medline",
             "MedlineCitationSet": "medline"}
NOT_DATA = ("LICENSE", "LICENCE", "COPYING", "README", "NOTICE")
BUILTIN_OBO = "hpo"


def sniff_xml(path: Path) -> tuple[str | None, str, int | None]:
    """(format, problem, line) of an `.xml` file from its root element: JATS or MEDLINE."""
    try:
        with open(path, "rb") as f:
            for _, elem in ET.iterparse(f, events=("start",)):
                tag = elem.tag.rsplit("}", 1)[-1]
                if tag in XML_ROOTS:
                    return XML_ROOTS[tag], "", None
                return None, (f"cannot tell the kind of XML from its root element <{tag}> (expected "
                              f"article, PubmedArticleSet or MedlineCitationSet); set the source's format"), None
    except ET.ParseError as e:
        return None, f"malformed XML: {e}", e.position[0]
    except OSError as e:
        return None, f"cannot read the file: {e}", None
    return None, "file is empty", None


def format_of(path: Path, declared: str) -> str | None:
    """The format of a file: the declared one, else by suffix (None when unknown); an `.xml`
    file is sniffed (its root element) and gives "xml" when that fails."""
    if declared != "auto":
        return declared
    suffix = suffix_of(path)
    if suffix == ".xml":
        return (sniff_xml(path)[0] or "xml") if path.is_file() else "xml"
    return AUTO.get(suffix)


def _input(path: Path, declared: str, spec: str) -> InputFile | None:
    fmt = format_of(path, declared)
    if fmt == "xml":
        _, problem, line = sniff_xml(path)
        return InputFile(path, fmt, spec, problem=problem, line=line)
    return None if fmt is None else InputFile(path, fmt, spec)


def resolve_paths(paths: list[str], declared: str, skipped: list | None = None) -> list[InputFile]:
    """Expand the configured paths: folders are walked (sorted) for files of the format.

    `hpo` means the built-in Human Phenotype Ontology. Missing paths come back with
    `missing=True`; a file whose format cannot be told from its suffix is a UserError. The
    files a walk does not read are appended to `skipped` ({path, reason, detail}). S2ORC
    2020 shards are paired (metadata with its pdf_parses).
    """
    from pmcllama.knowledge.ontology import ontology_path

    out: list[InputFile] = []
    for spec in paths:
        if spec == BUILTIN_OBO:
            out.append(InputFile(ontology_path(BUILTIN_OBO), "obo", spec))
            continue
        p = Path(spec).expanduser()
        if p.is_dir():
            found = _walk(p, declared, [] if skipped is None else skipped)
            if not found:
                out.append(InputFile(p, declared, spec, True, "no matching files in folder"))
            out.extend(found)
        elif p.is_file():
            inp = _input(p, declared, spec)
            if inp is None:
                raise UserError(
                    f"cannot tell the format from the suffix '{p.suffix}'; set the source's "
                    f"format to one of text, jsonl, obo, jats, medline, s2orc, textbook, parquet", p)
            out.append(inp)
        else:
            out.append(InputFile(p, format_of(p, declared) or declared, spec, True, "file not found"))
    if declared == "s2orc":
        from pmcllama.data.s2orc import pair_shards

        out = pair_shards(out)
    return out


def _walk(folder: Path, declared: str, skipped: list) -> list[InputFile]:
    found = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).parts
        if not f.is_file() or any(part.startswith(".") for part in rel):
            continue
        inp, reason, detail = classify(f, declared, str(folder))
        if inp is not None:
            found.append(inp)
        else:
            skipped.append({"path": str(f), "reason": reason, "detail": detail})
    return found


def classify(f: Path, declared: str, spec: str) -> tuple[InputFile | None, str, str]:
    """(the input, "", "") of a file met in a folder walk, or (None, reason, detail) when it is not read."""
    if f.name.upper().startswith(NOT_DATA):
        return None, "not_data", "licence or readme file: it describes the data, it is not part of it"
    suffix = suffix_of(f)
    shown = f"'{suffix}'" if suffix else "(none)"
    if declared == "auto":
        inp = _input(f, "auto", spec)
        if inp is None:
            return None, "other_format", f"suffix {shown} is not a known format; set the source's format to read it"
        return inp, "", ""
    if suffix not in SUFFIXES.get(declared, ()):
        return None, "other_format", f"not a {declared} file (suffix {shown})"
    kind = sniff_xml(f)[0] if suffix == ".xml" else None
    if kind not in (None, declared):  # an .xml file of the other kind (JATS in a MEDLINE folder)
        return None, "other_xml", f"{kind} XML, not {declared}"
    return InputFile(f, declared, spec), "", ""


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
    for item in jsonl_records(path, source):
        if isinstance(item, Document):
            yield item
        else:
            lineno, obj = item
            yield _record(obj, path, source, lineno, f"{path}:{lineno}", text_field)


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
        yield _bad(source, path, e.lineno, "bad_json", f"file is not JSON: {json_error(e)}")
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


def read_file(inp: InputFile, src: CorpusSource, events: Counter | None = None) -> Iterator[Document]:
    """Documents of one resolved input of the source `src`, by its format; `events` counts
    what is not a document."""
    source = src.name
    events = Counter() if events is None else events
    if inp.missing:
        reason = "missing_file" if inp.problem == "file not found" else "no_files"
        yield _bad(source, inp.path, None, reason, inp.problem)
    elif inp.format == "xml":
        yield _bad(source, inp.path, inp.line, "bad_xml" if inp.line else "unknown_xml", inp.problem)
    elif inp.format == "jats":
        from pmcllama.data.jats import read_jats

        yield from read_jats(inp.path, source, src.keep_captions, events)
    elif inp.format == "medline":
        from pmcllama.data.medline import read_medline

        yield from read_medline(inp.path, source, events)
    elif inp.format == "s2orc":
        from pmcllama.data.s2orc import read_s2orc_input

        yield from read_s2orc_input(inp, source, src.require_pmcid, events)
    elif inp.format == "text":
        yield from read_text(inp.path, source, src.split_paragraphs)
    elif inp.format == "jsonl":
        yield from read_jsonl(inp.path, source, src.text_field)
    elif inp.format == "obo":
        yield from read_obo_terms(inp.path, source, src.obo_root, src.limit, src.seed)
    elif inp.format == "textbook":
        from pmcllama.data.textbook import read_textbook

        yield from read_textbook(inp.path, source)
    elif inp.format == "parquet":
        from pmcllama.data.textbook import read_parquet

        yield from read_parquet(inp.path, source, src.text_field)
    else:  # pragma: no cover - formats are validated by the config
        raise UserError(f"unknown format '{inp.format}'", inp.path)
