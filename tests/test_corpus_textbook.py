"""Textbook reader (text, Markdown, PDF), Parquet / gzipped JSONL replay text, and bad input."""
from __future__ import annotations

import gzip
import json

import pytest

from pmcllama.corpus import CorpusConfig, CorpusSource, run
from pmcllama.data.readers import InputFile, read_file
from pmcllama.data.textbook import clean_book, cut_back_matter, read_parquet, read_textbook, strip_headers_footers
from pmcllama.errors import UserError

BODY = ("The heart pumps blood through the cardio-\nvascular system. Each beat starts in the sinoatrial node "
        "and spreads through the atria to the ventricles, which contract together.")


def make_pdf(path, pages: int = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with plt.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for i in range(1, pages + 1):
            fig = plt.figure(figsize=(6, 8))
            fig.text(0.1, 0.95, "Human Anatomy - Chapter 1")
            lines = [f"Section {i}: blood flows through the cardio-", "vascular system and the heart.",
                     "References" if i == pages else "The end of the paragraph.",
                     "Smith J. A paper. 2001." if i == pages else "Another sentence here."]
            for k, line in enumerate(lines):
                fig.text(0.1, 0.8 - 0.05 * k, line)
            fig.text(0.5, 0.03, str(i))
            pdf.savefig(fig)
            plt.close(fig)


def test_headers_footers_page_numbers():
    pages = [f"Anatomy 2e | page {i}\nBody line {i}.\nMore text {i}.\n{i}" for i in range(1, 6)]
    assert strip_headers_footers(pages) == [f"Body line {i}.\nMore text {i}." for i in range(1, 6)]
    two = ["Header\nA", "Header\nB"]  # fewer than 3 pages share it: not a running header
    assert strip_headers_footers(two) == two


def test_back_matter_and_hyphenation():
    text = ("# Chapter 1\nThe cardio-\nvascular system.\nA non-\nUpper hyphen stays.\n## References\n1. Smith J. 2001.\n"
            "# Chapter 2\nThe lungs.\nIndex\naorta, 12\nheart, 3")
    assert cut_back_matter(text).endswith("The lungs.")
    out = clean_book([text], markdown=True)
    assert out == "Chapter 1\nThe cardiovascular system.\nA non-\nUpper hyphen stays.\nChapter 2\nThe lungs."


def test_markdown_and_text_pages(tmp_path):
    md = tmp_path / "book.md"
    md.write_text("# Heart\n![fig](f.png)\nSee [the atlas](http://x) and **bold** words.\n", encoding="utf-8")
    [doc] = read_textbook(md, "books")
    assert doc.text == "Heart\n\nSee the atlas and bold words.\n"
    txt = tmp_path / "book.txt"  # pdftotext layout: pages split by form feeds
    txt.write_text("\f".join(f"Running Head\n{BODY}\n{i}" for i in range(1, 5)), encoding="utf-8")
    [doc] = read_textbook(txt, "books")
    assert "Running Head" not in doc.text and "cardiovascular" in doc.text and doc.metadata["pages"] == 4
    assert "\n1\n" not in doc.text


def test_pdf(tmp_path):
    pdf = tmp_path / "anatomy.pdf"
    make_pdf(pdf)
    [doc] = read_file(InputFile(pdf, "textbook", str(pdf)), CorpusSource(name="books", paths=[str(pdf)]))
    assert doc.error is None and doc.metadata["pages"] == 4
    assert "Human Anatomy" not in doc.text and "cardiovascular system" in doc.text
    assert "Section 4: blood flows" in doc.text and "Smith J" not in doc.text  # references cut
    assert not any(line.strip().isdigit() for line in doc.text.splitlines())


def test_parquet_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "fineweb.parquet"
    table = pa.table({"id": ["a", "b", "c"], "text": [BODY, None, "Third row text."], "url": ["u"] * 3})
    pq.write_table(table, path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 2
    docs = list(read_parquet(path, "general"))
    assert [(d.id, d.line, d.error) for d in docs] == [("a", 1, None), (f"{path}:2", 2, "text_not_string"),
                                                     ("c", 3, None)]
    docs = list(read_parquet(path, "general", text_field="body"))
    assert docs[0].error == "missing_text_field" and "columns: id, text, url" in docs[0].detail


BAD = {
    "truncated.jsonl.gz": (lambda p: p.write_bytes(gzip.compress(
        b"".join(json.dumps({"text": BODY}).encode() + b"\n" for _ in range(50)))[:-30]), "bad_gzip", None),
    "broken.xml": (lambda p: p.write_text("<PubmedArticleSet><PubmedArticle>\n<oops></PubmedArticleSet>"),
                   "bad_xml", 2),
    "latin1.txt": (lambda p: p.write_bytes(b"ok line\ncaf\xe9\n"), "not_utf8", 2),
    "badline.jsonl": (lambda p: p.write_text(json.dumps({"text": BODY}) + '\n{"text": \n'), "bad_json", 2),
    "nofield.jsonl": (lambda p: p.write_text(json.dumps({"body": BODY}) + "\n"), "missing_text_field", 1),
    "empty.md": (lambda p: p.write_text(""), "empty_file", None),
    "notreally.pdf": (lambda p: p.write_bytes(b"%PDF-1.4\nthis is not a pdf body"), "bad_pdf", None),
    "notreally.parquet": (lambda p: p.write_bytes(b"PAR1garbage"), "bad_parquet", None),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_stop_names_file(tmp_path, name):
    make, reason, line = BAD[name]
    path = tmp_path / name
    make(path)
    fmt = "textbook" if name.endswith(".md") else "auto"
    with pytest.raises(UserError) as err:
        run(CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama",
                         sources=[{"name": "s", "paths": [str(path)], "format": fmt}]))
    assert err.value.path == str(path) and name in str(err.value)
    if line is not None:
        assert err.value.line == line


def test_bad_input_skip_listed_in_report(tmp_path):
    paths = []
    for name, (make, _, _) in BAD.items():
        make(tmp_path / name)
        paths.append(str(tmp_path / name))
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": BODY}) + "\n", encoding="utf-8")
    out = run(CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", on_error="skip",
                           sources=[{"name": "s", "paths": [str(good)] + paths}]))
    stats = json.loads((out / "stats.json").read_text())["sources"]["s"]
    reasons = {Naming: r for Naming, r in ((s["file"].rsplit("/", 1)[-1], s["reason"]) for s in stats["skipped_inputs"])}
    assert reasons == {"truncated.jsonl.gz": "bad_gzip", "broken.xml": "bad_xml", "latin1.txt": "not_utf8",
                       "badline.jsonl": "bad_json", "nofield.jsonl": "missing_text_field", "empty.md": "empty_file",
                       "notreally.pdf": "bad_pdf", "notreally.parquet": "bad_parquet"}
    assert stats["kept"] >= 1 and stats["kept"] + stats["dropped"] == stats["documents_in"]
