"""S2ORC JSONL (one paper per line; `.jsonl` or gzipped `.jsonl.gz` / `.gz`).

Two layouts are read:

- the 2020 release (allenai/s2orc): `paper_id`, metadata either nested (`metadata: {title,
  pmc_id, pubmed_id, doi, year}`) or at the top level (`pmc_id` / `pmcid`, `title`, ...),
  `abstract` a list of {text, section} (or one string) and `body_text` a list of
  {text, section};
- the 2023 datasets release: `corpusid`, `externalids: {pubmedcentral, pubmed, doi}`,
  `content: {text, annotations: {title, abstract, paragraph, sectionheader, ...}}`, each
  annotation a JSON string (or list) of {start, end} character spans into `content.text`.

A paper becomes title, abstract, then its body paragraphs under their section headings,
one per line. With `require_pmcid` a paper without a PMC id is dropped (`no_pmcid`). A line
that is not JSON (`bad_json`) or has no text (`missing_text`) is an error record.
Metadata: s2_id, pmcid, pmid, doi, year.

The 2020 release (20200705v1) splits each paper in two files, numbered alike:
`metadata/metadata_N.jsonl.gz` (paper_id, pmc_id, title, abstract, ...) and
`pdf_parses/pdf_parses_N.jsonl.gz` (paper_id, abstract, body_text, ...); a paper's two
halves are in the same shard number. `pair_shards` pairs the files by kind and shard name:
the kind from the folder (`metadata/`, `pdf_parses/`) or else the name's start
(`metadata_*`, `pdf_parses_*`), the shard name from the rest of the file name, so
`metadata/metadata_0.jsonl.gz` goes with `pdf_parses/pdf_parses_0.jsonl.gz` and
`metadata_sample.jsonl` with `pdf_parses_sample.jsonl` in the same folder. A pair is read
as one input (`read_shards`), joined on `paper_id`:

- a metadata row with a parse becomes title + abstract + body (the metadata's abstract,
  the parse's only when the metadata has none: the PDF parser's abstract often runs into
  the introduction); event `parses_joined`;
- a metadata row without a parse still becomes title + abstract (an abstract is worth
  keeping; under `require_pmcid` only rows with a PMC id are kept, as for every paper);
  event `metadata_without_parse`;
- a parse whose paper_id has no metadata row in its shard is dropped
  (`parse_without_metadata`): without metadata there is no PMC id or title; a second
  parse of the same paper_id is dropped (`duplicate_parse`).

So every row is accounted for: metadata rows are documents (parses_joined +
metadata_without_parse of them), parse rows are parses_joined or dropped. A metadata shard
without its parse shard is read alone (every row `metadata_without_parse`), a parse shard
without its metadata shard has every row dropped as `parse_without_metadata`. Memory: the
ids of one metadata shard, and the abstract and body text (compressed) of the parses of
the papers that can be kept (with a PMC id under `require_pmcid`) of one parse shard.
"""
from __future__ import annotations

import json
import zlib
from collections import Counter
from pathlib import Path
from dataclasses import replace
from typing import Iterator

from pmcllama.data.document import Document, InputFile, jsonl_records, suffix_of
from pmcllama.errors import UserError

SHARD_KINDS = ("metadata", "pdf_parses")


def _pmcid(value: object) -> str | None:
    text = str(value).strip() if value not in (None, "") else ""
    if not text:
        return None
    return text if text.upper().startswith("PMC") else f"PMC{text}"


def _spans(annotations: dict, *keys: str) -> list[dict]:
    for key in keys:
        value = annotations.get(key)
        if isinstance(value, str):
            value = json.loads(value)
        if value:
            return sorted((s for s in value if isinstance(s, dict)), key=lambda s: int(s["start"]))
    return []


def _clean(text: str) -> str:
    return " ".join(text.split())


def _meta_src(obj: dict) -> dict:
    return obj["metadata"] if isinstance(obj.get("metadata"), dict) else obj


def _row_pmcid(obj: dict) -> str | None:
    meta_src = _meta_src(obj)
    return _pmcid(meta_src.get("pmc_id") or meta_src.get("pmcid") or obj.get("pmc_id") or obj.get("pmcid"))


def _old_layout(obj: dict) -> tuple[list[str], dict]:
    meta_src = _meta_src(obj)
    meta = {"s2_id": str(obj.get("paper_id", "")) or None, "pmcid": _row_pmcid(obj),
            "pmid": meta_src.get("pubmed_id") or meta_src.get("pmid"), "doi": meta_src.get("doi"),
            "year": meta_src.get("year")}
    lines = [_clean(meta_src.get("title") or obj.get("title") or "")]
    abstract = obj.get("abstract") if obj.get("abstract") is not None else meta_src.get("abstract")
    if isinstance(abstract, str):
        lines.append(_clean(abstract))
    elif isinstance(abstract, list):
        lines.extend(_clean(p.get("text", "")) for p in abstract if isinstance(p, dict))
    section = None
    for para in obj.get("body_text") or []:
        if not isinstance(para, dict) or not _clean(para.get("text") or ""):
            continue
        if para.get("section") and para["section"] != section:
            section = para["section"]
            lines.append(_clean(section))
        lines.append(_clean(para["text"]))
    return lines, meta


def _new_layout(obj: dict) -> tuple[list[str], dict]:
    ids = obj.get("externalids") or {}
    meta = {"s2_id": str(obj.get("corpusid", "")) or None, "pmcid": _pmcid(ids.get("pubmedcentral")),
            "pmid": ids.get("pubmed"), "doi": ids.get("doi"), "year": obj.get("year")}
    content = obj.get("content") or {}
    text = content.get("text") or ""
    ann = content.get("annotations") or {}
    title = _spans(ann, "title")
    lines = [_clean(text[int(s["start"]):int(s["end"])]) for s in title[:1]]
    abstract = _spans(ann, "abstract")
    lines += [_clean(text[int(s["start"]):int(s["end"])]) for s in abstract]
    in_abstract = [(int(s["start"]), int(s["end"])) for s in abstract]
    blocks = [(s, 0) for s in _spans(ann, "sectionheader", "section_header")]
    blocks += [(s, 1) for s in _spans(ann, "paragraph")]
    for span, kind in sorted(blocks, key=lambda b: (int(b[0]["start"]), b[1])):
        start, end = int(span["start"]), int(span["end"])
        if any(a <= start < b for a, b in in_abstract):
            continue
        lines.append(_clean(text[start:end]))
    if not title and not abstract and not blocks and text.strip():
        lines.append(text.strip())  # no annotations: the raw text is all there is
    return lines, meta


def paper(obj: object, path: Path, source: str, lineno: int, require_pmcid: bool) -> Document:
    """One S2ORC record as a document (or an error / `no_pmcid` drop)."""
    where = f"{path}:{lineno}"
    if not isinstance(obj, dict):
        return Document("", source, where, str(path), lineno, "not_object",
                        f"record is not a JSON object ({type(obj).__name__})")
    try:
        lines, meta = _new_layout(obj) if "content" in obj or "externalids" in obj else _old_layout(obj)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return Document("", source, where, str(path), lineno, "bad_record", f"malformed S2ORC record: {e!r}")
    meta = {k: v for k, v in meta.items() if v not in (None, "")}
    doc_id = meta.get("pmcid") or (f"s2:{meta['s2_id']}" if "s2_id" in meta else where)
    if require_pmcid and "pmcid" not in meta:
        return Document("", source, doc_id, str(path), lineno, detail="paper has no PMC id",
                        metadata=meta, drop="no_pmcid")
    text = "\n".join(x for x in lines if x)
    if not text:
        return Document("", source, doc_id, str(path), lineno, "missing_text",
                        "record has no text (no title, abstract, body_text or content.text)", meta)
    return Document(text, source, doc_id, str(path), lineno, metadata=meta)


def read_s2orc(path: Path, source: str, require_pmcid: bool = True,
               events: Counter | None = None) -> Iterator[Document]:
    """The papers of one S2ORC JSONL file (gzipped when its name ends in .gz)."""
    for item in jsonl_records(path, source):
        yield item if isinstance(item, Document) else paper(item[1], path, source, item[0], require_pmcid)


def read_s2orc_input(inp: InputFile, source: str, require_pmcid: bool = True,
                     events: Counter | None = None) -> Iterator[Document]:
    """The papers of a resolved S2ORC input: one file, or a 2020 metadata / pdf_parses shard pair."""
    if inp.shard == "metadata":
        yield from read_shards(inp.path, inp.paired, source, require_pmcid, events)
    elif inp.shard == "pdf_parses":
        yield from read_shards(None, inp.path, source, require_pmcid, events)
    else:
        yield from read_s2orc(inp.path, source, require_pmcid, events)


# --- the 2020 release: metadata and pdf_parses shards joined on paper_id -------------------

def shard_kind(path: Path) -> str:
    """"metadata" or "pdf_parses" for a file of the 2020 layout (by its folder, else its name), else ""."""
    if path.parent.name in SHARD_KINDS:
        return path.parent.name
    name = path.name.lower()
    return next((kind for kind in SHARD_KINDS if name.startswith(kind)), "")


def _shard_key(path: Path, kind: str) -> tuple[str, str]:
    """(release folder, shard name): alike for `metadata/metadata_7.jsonl.gz` and `pdf_parses/pdf_parses_7.jsonl.gz`."""
    base = path.parent.parent if path.parent.name == kind else path.parent
    stem = path.name[:len(path.name) - len(suffix_of(path))]
    if stem.lower().startswith(kind):
        stem = stem[len(kind):]
    return str(base), stem.lstrip("_-.")


def pair_shards(files: list[InputFile]) -> list[InputFile]:
    """Each metadata shard with its pdf_parses shard as one input (`paired`); the others unchanged.

    A shard without its other half stays one input on its own (`shard` says which half).
    Two files of one kind with the same shard name are a UserError (which one to join?).
    """
    keyed: dict[tuple[str, str, str], InputFile] = {}
    for f in files:
        kind = "" if f.missing else shard_kind(f.path)
        if not kind:
            continue
        key = (kind, *_shard_key(f.path, kind))
        if key in keyed:
            raise UserError(f"two S2ORC {kind} files with the shard name '{key[2]}' "
                            f"(the other: {keyed[key].path}); keep one of them", f.path)
        keyed[key] = f
    out = []
    for f in files:
        kind = "" if f.missing else shard_kind(f.path)
        if not kind:
            out.append(f)
            continue
        key = _shard_key(f.path, kind)
        if kind == "metadata":
            parses = keyed.get(("pdf_parses", *key))
            out.append(replace(f, shard=kind, paired=None if parses is None else parses.path))
        elif ("metadata", *key) not in keyed:
            out.append(replace(f, shard=kind))
    return out


def _metadata_ids(path: Path | None, require_pmcid: bool) -> tuple[set[str], set[str]]:
    """(every paper_id of the metadata shard, those whose parse is wanted: with a PMC id under require_pmcid)."""
    ids: set[str] = set()
    wanted: set[str] = set()
    for item in [] if path is None else jsonl_records(path, ""):
        if isinstance(item, Document) or not isinstance(item[1], dict) or item[1].get("paper_id") in (None, ""):
            continue  # bad rows are reported when the shard is read for its papers
        pid = str(item[1]["paper_id"])
        ids.add(pid)
        if not require_pmcid or _row_pmcid(item[1]):
            wanted.add(pid)
    return ids, wanted


def _pack(obj: dict) -> bytes:
    """A parse's abstract and body paragraphs (text, section), compressed to wait for their metadata row."""
    body = [{"text": p.get("text"), "section": p.get("section")} for p in obj.get("body_text") or []
            if isinstance(p, dict)]
    return zlib.compress(json.dumps({"abstract": obj.get("abstract"), "body_text": body}).encode(), 1)


def _index_parses(path: Path, source: str, ids: set[str], wanted: set[str], store: dict[str, bytes],
                  metadata: Path | None) -> Iterator[Document]:
    """Read a pdf_parses shard: keep the wanted parses in `store` (packed; every matched id as a key,
    b"" when not wanted), yield its bad lines and the parses that are dropped."""
    for item in jsonl_records(path, source):
        if isinstance(item, Document):
            yield item
            continue
        lineno, obj = item
        pid = str(obj.get("paper_id") or "") if isinstance(obj, dict) else ""
        body = obj.get("body_text") if isinstance(obj, dict) else None
        where, drop, detail = f"{path}:{lineno}", None, ""
        if not pid or not isinstance(body, (list, type(None))):
            what = ("is not a JSON object" if not isinstance(obj, dict) else "has no paper_id" if not pid
                    else f"has body_text of type {type(body).__name__}, not a list")
            yield Document("", source, where, str(path), lineno, "bad_record", f"S2ORC pdf parse {what}")
            continue
        if pid not in ids:
            drop = "parse_without_metadata"
            detail = (f"no metadata row with paper_id {pid} in {metadata}" if metadata is not None
                      else "no metadata shard with this shard's name")
        elif pid in store:
            drop, detail = "duplicate_parse", f"a second parse of paper_id {pid} in this shard"
        if drop:
            yield Document("", source, f"s2:{pid}", str(path), lineno, detail=detail, drop=drop)
        else:
            store[pid] = _pack(obj) if pid in wanted else b""


def _with_parse(obj: dict, packed: bytes) -> dict:
    """The metadata row with its parse's body (and the parse's abstract when the row has none)."""
    parse = json.loads(zlib.decompress(packed))
    merged = dict(obj, body_text=parse["body_text"])
    if not obj.get("abstract") and not _meta_src(obj).get("abstract"):
        merged["abstract"] = parse["abstract"]
    return merged


def read_shards(metadata: Path | None, parses: Path | None, source: str, require_pmcid: bool = True,
                events: Counter | None = None) -> Iterator[Document]:
    """The papers of a 2020 metadata shard joined with its pdf_parses shard on paper_id (see above);
    either may be None (the shard's other half is absent)."""
    events = Counter() if events is None else events
    ids, wanted = _metadata_ids(metadata, require_pmcid)
    store: dict[str, bytes] = {}
    if parses is not None:
        yield from _index_parses(parses, source, ids, wanted, store, metadata)
    for item in [] if metadata is None else jsonl_records(metadata, source):
        if isinstance(item, Document):
            yield item
            continue
        lineno, obj = item
        pid = obj.get("paper_id") if isinstance(obj, dict) else None
        packed = None if pid in (None, "") else store.get(str(pid))
        events["parses_joined" if packed is not None else "metadata_without_parse"] += 1
        yield paper(_with_parse(obj, packed) if packed else obj, metadata, source, lineno, require_pmcid)
