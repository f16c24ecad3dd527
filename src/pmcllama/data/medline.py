"""MEDLINE / PubMed citation XML (`.xml`, `.xml.gz`: the NLM baseline and update files).

One document per citation (MedlineCitation, inside PubmedArticle or directly under the old
MedlineCitationSet root; PubmedBookArticle too): the title, then the abstract, each
AbstractText on its own line with its Label as a heading line when it has one. Metadata:
pmid, year, journal, mesh (descriptor names). A citation without an abstract is dropped
with reason `no_abstract`. DeleteCitation records are counted as events: `deleted_citations`
(PMIDs listed) and `deleted_after_kept` (PMIDs this run had already yielded; they stay in
the corpus, the deletion is only reported).

The file is read with ElementTree.iterparse and every record is cleared once read, so
memory stays flat however large the file. A malformed file (ParseError, with its line) or a
truncated gzip ends the file with one error record; the citations before it are kept.
"""
from __future__ import annotations

import gzip
import re
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

from pmcllama.data.document import Document

RECORDS = {"MedlineCitation", "PubmedArticle", "PubmedBookArticle", "DeleteCitation"}
_YEAR = re.compile(r"\b(1[89]\d\d|2\d\d\d)\b")


def _text(el: ET.Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def _year(cit: ET.Element) -> int | None:
    for path in (".//Article/Journal/JournalIssue/PubDate", ".//Book/PubDate", ".//ArticleDate",
                 "DateCompleted", "DateCreated"):
        date = cit.find(path)
        if date is not None:
            m = _YEAR.search(date.findtext("Year") or date.findtext("MedlineDate") or "")
            if m:
                return int(m.group(1))
    return None


def _abstract(cit: ET.Element) -> list[str]:
    abstract = cit.find(".//Abstract")
    if abstract is None:
        return []
    lines = []
    for part in abstract.findall("AbstractText"):
        text = _text(part)
        label = (part.get("Label") or "").strip()
        if text and label and label.upper() != "UNLABELLED":
            lines.append(label)
        if text:
            lines.append(text)
    return lines


def citation(cit: ET.Element, path: Path, source: str, n: int = 0) -> Document:
    """One MedlineCitation (or BookDocument) element as a document, or as a `no_abstract` drop."""
    pmid = (cit.findtext("PMID") or "").strip()
    meta: dict = {"pmid": pmid}
    year = _year(cit)
    if year is not None:
        meta["year"] = year
    journal = _text(cit.find("Article/Journal/Title")) or _text(cit.find("MedlineJournalInfo/MedlineTA"))
    if journal:
        meta["journal"] = journal
    mesh = [_text(d) for d in cit.findall("MeshHeadingList/MeshHeading/DescriptorName")]
    if mesh:
        meta["mesh"] = mesh
    title = _text(cit.find("Article/ArticleTitle")) or _text(cit.find("ArticleTitle")) \
        or _text(cit.find("Book/BookTitle"))
    abstract = _abstract(cit)
    doc_id = f"PMID:{pmid}" if pmid else f"{path}#{n}"
    if not abstract:
        return Document("", source, doc_id, str(path), None, detail=f"citation has no abstract: {title[:100]}",
                        metadata=meta, drop="no_abstract")
    return Document("\n".join([title, *abstract] if title else abstract), source, doc_id, str(path),
                    None, metadata=meta)


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_medline(path: Path, source: str, events: Counter | None = None,
                 yielded: set[str] | None = None) -> Iterator[Document]:
    """The citations of one MEDLINE/PubMed XML file (gzipped or not).

    `yielded`: PMIDs already yielded (by default those of this file only, so memory stays
    bounded; a caller may share one set across files); this file's kept PMIDs are added.
    """
    events = Counter() if events is None else events
    yielded = set() if yielded is None else yielded
    n = 0
    try:
        with _open(path) as fh:
            depth, root = 0, None
            for event, el in ET.iterparse(fh, events=("start", "end")):
                if event == "start":
                    depth += 1
                    root = el if root is None else root
                    continue
                depth -= 1
                if depth != 1:
                    continue
                tag = el.tag
                if tag == "DeleteCitation":
                    pmids = [(p.text or "").strip() for p in el.findall("PMID")]
                    events["deleted_citations"] += len(pmids)
                    events["deleted_after_kept"] += sum(p in yielded for p in pmids)
                elif tag in RECORDS:
                    cit = el if tag == "MedlineCitation" else el.find("MedlineCitation")
                    cit = el.find("BookDocument") if cit is None else cit
                    if cit is not None:
                        n += 1
                        doc = citation(cit, path, source, n)
                        if doc.drop is None:
                            yielded.add(doc.metadata["pmid"])
                        yield doc
                root.clear()  # the record is read: free it, keep memory flat
    except ET.ParseError as e:
        line = e.position[0]
        yield Document("", source, f"{path}:{line}", str(path), line, "bad_xml",
                       f"malformed XML after {n} citations: {e}")
        return
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        yield Document("", source, str(path), str(path), None, "bad_gzip",
                       f"truncated or corrupt gzip after {n} citations: {e}")
        return
    if n == 0 and not events["deleted_citations"]:
        yield Document("", source, str(path), str(path), None, "empty_file", "file holds no citations")
