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
"""
from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

from pmcllama.data.readers import Document


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


def _old_layout(obj: dict) -> tuple[list[str], dict]:
    meta_src = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else obj
    meta = {"s2_id": str(obj.get("paper_id", "")) or None,
            "pmcid": _pmcid(meta_src.get("pmc_id") or meta_src.get("pmcid") or obj.get("pmc_id") or obj.get("pmcid")),
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
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield Document("", source, f"{path}:{lineno}", str(path), lineno, "not_utf8",
                                   f"line is not UTF-8 text ({e.reason})")
                    continue
                except json.JSONDecodeError as e:
                    yield Document("", source, f"{path}:{lineno}", str(path), lineno, "bad_json",
                                   f"line is not JSON: {e.msg} at column {e.colno}")
                    continue
                yield paper(obj, path, source, lineno, require_pmcid)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        yield Document("", source, f"{path}:{lineno + 1}", str(path), lineno + 1, "bad_gzip",
                       f"truncated or corrupt gzip after line {lineno}: {e}")
        return
    if not seen:
        yield Document("", source, str(path), str(path), None, "empty_file", "file has no records")
