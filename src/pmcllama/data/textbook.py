"""Textbooks (plain text, Markdown, PDF) and general replay text (Parquet with a text field).

A textbook is one document per file, cleaned of what page layout leaves behind:

- running page headers and footers: a page's first or last line that recurs (digits
  ignored) on at least half of the pages (and at least 3) is removed;
- page numbers: lines holding only a number ("12", "Page 12", "12 of 300", "xii") among
  a page's first or last two lines;
- hyphenation at line ends: "cardio-\\nvascular" -> "cardiovascular" (next line lower case);
- back matter: a "References" / "Bibliography" / "Further reading" section is cut up to the
  next heading, an "Index" section from its heading to the end of the book.

Pages are the PDF's pages (pypdf), or form-feed separated pages in a text file (pdftotext
output); a file without pages is cleaned of hyphenation and back matter only. Markdown loses
its markup: heading marks, emphasis, images and link targets (link text is kept).

Parquet files (RedPajama / FineWeb layout) are read one row group at a time (pyarrow), one
document per row, text from `text_field`, id from an `id` column when there is one.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterator

from pmcllama.data.document import Document, bad_record as _bad, decode as _decode

_PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?(?:\d{1,4}|[ivxlcdm]{1,7})(?:\s*(?:of|/)\s*\d{1,4})?\s*$", re.I)
_HYPHEN = re.compile(r"(\w)-\n(?=[a-z])")
_SECTION_CUT = re.compile(r"^\s*(?:#+\s*)?(?:\d+(?:\.\d+)*\s+)?(references|bibliography|further reading|"
                          r"works cited|index)\s*$", re.I)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S|chapter\s+\d+|part\s+[ivx\d]+\b)", re.I)
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_HEADING = re.compile(r"^#{1,6}\s+", re.M)
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`)(?=\S)(.+?)(?<=\S)\1")


def _key(line: str) -> str:
    return re.sub(r"\d+", "#", line.strip().lower())


def strip_headers_footers(pages: list[str]) -> list[str]:
    """Remove running headers/footers (a page's first or last line recurring, digits ignored,
    on half the pages or more) and page-number lines among a page's first or last two lines."""
    counts: Counter = Counter()
    for page in pages:
        lines = [x for x in page.split("\n") if x.strip()]
        counts.update({_key(x) for x in lines[:1] + lines[-1:]})
    need = max(3, (len(pages) + 1) // 2)
    recurring = {k for k, n in counts.items() if n >= need}
    out = []
    for page in pages:
        lines = page.split("\n")
        nonblank = [i for i, x in enumerate(lines) if x.strip()]
        first_last = set(nonblank[:1] + nonblank[-1:])
        near_edge = set(nonblank[:2] + nonblank[-2:])
        out.append("\n".join(x for i, x in enumerate(lines)
                             if not (i in first_last and _key(x) in recurring)
                             and not (i in near_edge and _PAGE_NUMBER.match(x))))
    return out


def cut_back_matter(text: str) -> str:
    """Cut reference sections (to the next heading) and the index (to the end)."""
    lines = text.split("\n")
    keep, cutting = [], None
    for line in lines:
        m = _SECTION_CUT.match(line)
        if m:
            cutting = m.group(1).lower()
            if cutting == "index":
                break
            continue
        if cutting and _HEADING.match(line):
            cutting = None
        if not cutting:
            keep.append(line)
    return "\n".join(keep)


def markdown_to_text(text: str) -> str:
    text = _MD_IMAGE.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_EMPHASIS.sub(r"\2", text)
    return text


def clean_book(pages: list[str], markdown: bool = False) -> str:
    """One cleaned text from a book's pages (see the module doc)."""
    if len(pages) > 1:
        pages = strip_headers_footers(pages)
    text = "\n".join(pages)
    text = cut_back_matter(_HYPHEN.sub(r"\1", text))
    if markdown:
        text = _MD_HEADING.sub("", markdown_to_text(text))
    return text


def pdf_pages(path: Path) -> list[str]:
    """The text of every page of a PDF (pypdf); raises ValueError naming the page."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        n = len(reader.pages)
    except (PyPdfError, OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the PDF: {e}") from None
    pages = []
    for i in range(n):
        try:
            pages.append(reader.pages[i].extract_text() or "")
        except Exception as e:  # pypdf raises many kinds on a broken page
            raise ValueError(f"cannot read page {i + 1} of the PDF: {type(e).__name__}: {e}") from None
    return pages


def read_textbook(path: Path, source: str) -> Iterator[Document]:
    """A textbook file (.txt, .md, .pdf) as one cleaned document."""
    if path.suffix.lower() == ".pdf":
        try:
            pages = pdf_pages(path)
        except ValueError as e:
            yield _bad(source, path, None, "bad_pdf", str(e))
            return
    else:
        text = _decode(path, source, path.read_bytes())
        if isinstance(text, Document):
            yield text
            return
        pages = text.split("\f")
    if not any(p.strip() for p in pages):
        yield _bad(source, path, None, "empty_file", "file has no text" + (" (a scanned PDF?)" if
                                                                             path.suffix.lower() == ".pdf" else ""))
        return
    text = clean_book(pages, markdown=path.suffix.lower() == ".md")
    yield Document(text, source, str(path), str(path), 1, metadata={"pages": len(pages)})


def read_parquet(path: Path, source: str, text_field: str = "text") -> Iterator[Document]:
    """Rows of a Parquet file, one row group at a time; `line` is the 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield _bad(source, path, None, "bad_parquet", f"not a readable Parquet file: {e}")
        return
    names = pf.schema_arrow.names
    if text_field not in names:
        yield _bad(source, path, None, "missing_text_field",
                   f"no '{text_field}' column (columns: {', '.join(names[:8])})")
        return
    columns = [text_field] + (["id"] if "id" in names and text_field != "id" else [])
    row = 0
    for g in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(g, columns=columns)
        except (pa.ArrowException, OSError) as e:
            yield _bad(source, path, row + 1, "bad_parquet", f"cannot read row group {g}: {e}")
            return
        texts = table.column(text_field).to_pylist()
        ids = table.column("id").to_pylist() if "id" in columns else [None] * len(texts)
        for text, rid in zip(texts, ids):
            row += 1
            if not isinstance(text, str):
                yield _bad(source, path, row, "text_not_string",
                           f"row {row}: column '{text_field}' is {type(text).__name__}, not a string")
                continue
            yield Document(text, source, str(rid) if rid is not None else f"{path}#row{row}", str(path), row)
    if row == 0:
        yield _bad(source, path, None, "empty_file", "file has no rows")
