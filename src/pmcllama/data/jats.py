"""PubMed Central full text: JATS XML articles (`.nxml`, `.xml`) and `.tar.gz` packages of them.

An article becomes one document: the title, the abstract(s), then the body's section
headings and paragraphs in order, one per line. References (ref-list), figures, tables,
formulas, supplementary material, footnotes and the back matter (acknowledgements,
appendices, ...) are dropped; `keep_captions` keeps figure and table captions (label,
title and caption text) where the float stands. Metadata: pmcid, pmid, doi, journal, year.

Parsing uses the standard library's ElementTree, which never fetches external entities or
DTDs. A package is read as a stream (tarfile "r|*"), member by member; members that are not
`.nxml`/`.xml` (PDFs, images) are counted under the `tar_members_skipped` event.
"""
from __future__ import annotations

import gzip
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

from pmcllama.data.document import Document, suffix_of

CAPTIONED = {"fig", "fig-group", "table-wrap", "table-wrap-group"}
DROPPED = CAPTIONED | {
    "ref-list", "table", "disp-formula", "disp-formula-group", "inline-formula", "tex-math", "math",
    "supplementary-material", "graphic", "inline-graphic", "media", "alternatives", "chem-struct-wrap",
    "fn-group", "fn", "label", "title", "object-id", "array", "code", "preformat", "processing-meta",
}
CONTAINERS = {"list", "list-item", "disp-quote", "boxed-text", "statement", "def-list", "def-item", "def",
              "speech", "glossary", "app", "notes"}
ID_TYPES = {"pmc": "pmcid", "pmcid": "pmcid", "pmid": "pmid", "doi": "doi"}
DATE_ORDER = ("ppub", "epub", "pub", "epub-ppub", "collection")


def _tag(el: ET.Element) -> str:
    return el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""


def _clean(text: str) -> str:
    return " ".join(text.split())


def _inline(el: ET.Element, keep_captions: bool, later: list[str]) -> str:
    """The running text of `el`, without dropped elements (captions go to `later`)."""
    parts = [el.text or ""]
    for child in el:
        tag = _tag(child)
        if tag in CAPTIONED and keep_captions:
            later.extend(_captions(child))
        elif tag == "break":
            parts.append(" ")
        elif tag not in DROPPED:
            parts.append(_inline(child, keep_captions, later))
        else:
            parts.append(" ")  # "is<formula/>with" must not become "iswith"
        parts.append(child.tail or "")
    return "".join(parts)


def _captions(el: ET.Element) -> list[str]:
    """'label. caption' of a fig / table-wrap (and of each one in a group)."""
    out = []
    for float_el in el.iter():
        if _tag(float_el) not in {"fig", "table-wrap"}:
            continue
        label = _clean(float_el.findtext("label") or "")
        caption = next((c for c in float_el if _tag(c) == "caption"), None)
        text = " ".join(_clean(_inline(c, False, [])) for c in caption) if caption is not None else ""
        line = ". ".join(x for x in (label.rstrip("."), text.strip()) if x)
        if line:
            out.append(line)
    return out


def _heading(el: ET.Element) -> str:
    """'label title' of a section ("2.1 Methods"), or ''."""
    parts = [el.find("label"), el.find("title")]
    return " ".join(_clean(_inline(x, False, [])) for x in parts if x is not None).strip()


def _section(el: ET.Element, keep_captions: bool, out: list[str]) -> None:
    """A section's heading and blocks; a section left empty (only a figure, say) gives nothing."""
    inner: list[str] = []
    _blocks(el, keep_captions, inner)
    if inner:
        heading = _heading(el)
        out.extend([heading, *inner] if heading else inner)


def _blocks(el: ET.Element, keep_captions: bool, out: list[str]) -> None:
    """Headings and paragraphs under `el`, in document order, appended to `out`."""
    for child in el:
        tag = _tag(child)
        if tag in ("sec", "boxed-text", "app"):
            _section(child, keep_captions, out)
        elif tag == "p":
            later: list[str] = []
            text = _clean(_inline(child, keep_captions, later))
            if text:
                out.append(text)
            out.extend(later)
        elif tag in CAPTIONED:
            if keep_captions:
                out.extend(_captions(child))
        elif tag in CONTAINERS:
            _blocks(child, keep_captions, out)
        elif tag not in DROPPED and len(child):
            _blocks(child, keep_captions, out)  # an unknown wrapper: look inside
        elif tag not in DROPPED:
            out.append(_clean(child.text or ""))


def _metadata(root: ET.Element) -> dict:
    meta: dict = {}
    am = root.find("front/article-meta")
    if am is None:
        return meta
    for aid in am.findall("article-id"):
        key = ID_TYPES.get(aid.get("pub-id-type", ""))
        if key and key not in meta and (aid.text or "").strip():
            meta[key] = aid.text.strip()
    if "pmcid" in meta and not meta["pmcid"].upper().startswith("PMC"):
        meta["pmcid"] = "PMC" + meta["pmcid"]
    jm = root.find("front/journal-meta")
    if jm is not None:
        title = jm.find(".//journal-title")
        nlm = next((j for j in jm.findall("journal-id") if j.get("journal-id-type") == "nlm-ta"), None)
        chosen = title if title is not None else nlm
        if chosen is not None and (chosen.text or "").strip():
            meta["journal"] = _clean(chosen.text)
    dates = {(d.get("pub-type") or d.get("date-type") or ""): d.findtext("year") for d in am.findall("pub-date")}
    years = [dates[k] for k in DATE_ORDER if dates.get(k)] or [y for y in dates.values() if y]
    if years and years[0].strip().isdigit():
        meta["year"] = int(years[0].strip())
    return meta


def article_text(root: ET.Element, keep_captions: bool = False) -> str:
    """Title, abstracts, then body headings and paragraphs, one per line."""
    out: list[str] = []
    title = root.find("front/article-meta/title-group/article-title")
    if title is not None:
        out.append(_clean(_inline(title, False, [])))
    for abstract in root.findall("front/article-meta/abstract"):
        if abstract.get("abstract-type") in ("graphical", "teaser", "toc"):
            continue
        _section(abstract, keep_captions, out)
    body = root.find("body")
    if body is not None:
        _blocks(body, keep_captions, out)
    if keep_captions:
        for group in root.findall("floats-group"):
            for child in group:
                if _tag(child) in CAPTIONED:
                    out.extend(_captions(child))
    return "\n".join(x for x in out if x)


def parse_article(data: bytes, path: Path, source: str, member: str | None, keep_captions: bool) -> Document:
    """One JATS article (bytes) as a Document; `member` names it inside a package."""
    where = f"{path}:{member}" if member else str(path)
    what = f"member '{member}': " if member else ""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        line = e.position[0]
        # inside a package the line is the member's: it stays in the message, not on the tar file
        return Document("", source, f"{where}:{line}", str(path), None if member else line, "bad_xml",
                        f"{what}malformed XML: {e}")
    if _tag(root) == "pmc-articleset" and len(root) and _tag(root[0]) == "article":
        root = root[0]
    if _tag(root) != "article":
        return Document("", source, where, str(path), None, "not_jats",
                        f"{what}root element is <{_tag(root)}>, not a JATS <article>")
    meta = _metadata(root)
    text = article_text(root, keep_captions)
    doc_id = meta.get("pmcid") or meta.get("pmid") or meta.get("doi") or where
    if not text.strip():
        return Document("", source, doc_id, str(path), None, "empty_article",
                        f"{what}article has no title, abstract or body text", meta)
    return Document(text, source, doc_id, str(path), None, metadata=meta)


def _read_package(path: Path, source: str, keep_captions: bool, events: Counter) -> Iterator[Document]:
    seen = False
    member_name = ""
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                member_name = member.name
                if not member.isfile():
                    continue
                if not member.name.lower().endswith((".nxml", ".xml")):
                    events["tar_members_skipped"] += 1
                    continue
                seen = True
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                yield parse_article(data, path, source, member.name, keep_captions)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        after = f" after member '{member_name}'" if member_name else ""
        yield Document("", source, str(path), str(path), None, "bad_archive",
                       f"unreadable or truncated archive{after}: {e}")
        return
    if not seen:
        yield Document("", source, str(path), str(path), None, "empty_file", "package holds no .nxml/.xml article")


def read_jats(path: Path, source: str, keep_captions: bool = False,
              events: Counter | None = None) -> Iterator[Document]:
    """The articles of a JATS file or a (gzipped) tar package of them."""
    events = Counter() if events is None else events
    if suffix_of(path) in (".tar.gz", ".tgz", ".tar"):
        yield from _read_package(path, source, keep_captions, events)
        return
    yield parse_article(path.read_bytes(), path, source, None, keep_captions)
