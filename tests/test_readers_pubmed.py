"""Readers for PubMed Central JATS, MEDLINE citation XML and S2ORC JSONL, and their wiring
into the corpus stage (auto-detection, drops by reason, bad input under stop / skip)."""
from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from pmcllama.corpus import CorpusConfig, run
from pmcllama.data.jats import read_jats
from pmcllama.data.medline import read_medline
from pmcllama.data.readers import format_of, resolve_paths
from pmcllama.data.executor import make_jobs
from pmcllama.data.s2orc import read_s2orc, read_shards
from pmcllama.data.shards import read_corpus
from pmcllama.errors import UserError

JATS = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.2 20190208//EN" "JATS-archivearticle1.dtd">
<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:mml="http://www.w3.org/1998/Math/MathML">
<front>
<journal-meta><journal-id journal-id-type="nlm-ta">J Test Med</journal-id>
<journal-title-group><journal-title>Journal of Test Medicine</journal-title></journal-title-group></journal-meta>
<article-meta>
<article-id pub-id-type="pmid">{pmid}</article-id>
<article-id pub-id-type="pmc">{pmc}</article-id>
<article-id pub-id-type="doi">10.1000/test.{pmc}</article-id>
<title-group><article-title>Aortic <italic>stenosis</italic> in adults</article-title></title-group>
<pub-date pub-type="collection"><year>2011</year></pub-date>
<pub-date pub-type="epub"><day>3</day><month>5</month><year>2010</year></pub-date>
<abstract><sec><title>Background</title><p>Aortic stenosis narrows the valve.</p></sec>
<sec><title>Results</title><p>Surgery helps.</p></sec></abstract>
</article-meta>
</front>
<body>
<p>Valve disease is common.</p>
<sec><label>1</label><title>Introduction</title>
<p>The aortic valve has three cusps [<xref ref-type="bibr" rid="r1">1</xref>].</p>
<p>Flow obeys <inline-formula><mml:math><mml:mi>Q</mml:mi></mml:math></inline-formula> the law.</p>
<disp-formula id="e1"><mml:math><mml:mi>P</mml:mi></mml:math></disp-formula>
<fig id="f1"><label>Figure 1</label><caption><title>Valve anatomy.</title><p>Three cusps shown.</p></caption><graphic xlink:href="f1.jpg"/></fig>
<sec><title>Sub part</title><p>Calcification<fn id="fn1"><p>A footnote.</p></fn> increases with age.</p>
<list><list-item><p>First item.</p></list-item><list-item><p>Second item.</p></list-item></list></sec>
</sec>
<sec><title>Methods</title>
<p>We measured gradients.<table-wrap id="t1"><label>Table 1</label><caption><p>Gradients by group.</p></caption><table><tr><td>42 mmHg</td></tr></table></table-wrap></p>
</sec>
<sec><title>Supplementary Material</title><supplementary-material id="s1"><label>Data S1</label><caption><p>Raw data.</p></caption></supplementary-material></sec>
</body>
<back>
<ack><p>We thank the funders.</p></ack>
<ref-list><ref id="r1"><mixed-citation>Smith J. Reference paper title about valves. Lancet. 2001;1:1-2.</mixed-citation></ref></ref-list>
</back>
</article>
"""
JATS_TEXT = """Aortic stenosis in adults
Background
Aortic stenosis narrows the valve.
Results
Surgery helps.
Valve disease is common.
1 Introduction
The aortic valve has three cusps [1].
Flow obeys the law.
Sub part
Calcification increases with age.
First item.
Second item.
Methods
We measured gradients."""
JATS_CAPTIONS = JATS_TEXT.replace(
    "Flow obeys the law.\n", "Flow obeys the law.\nFigure 1. Valve anatomy. Three cusps shown.\n").replace(
    "We measured gradients.", "We measured gradients.\nTable 1. Gradients by group.")

MEDLINE = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2019//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_190101.dtd">
<PubmedArticleSet>
<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM"><PMID Version="1">111</PMID>
<Article><Journal><JournalIssue><PubDate><Year>2019</Year><Month>Mar</Month></PubDate></JournalIssue>
<Title>Heart journal</Title></Journal>
<ArticleTitle>Beta blockers after infarction.</ArticleTitle>
<Abstract><AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">Beta blockers are <i>widely</i> used.</AbstractText>
<AbstractText Label="RESULTS">Mortality fell.</AbstractText></Abstract></Article>
<MeshHeadingList><MeshHeading><DescriptorName UI="D1">Adrenergic beta-Antagonists</DescriptorName>
<QualifierName UI="Q1">therapeutic use</QualifierName></MeshHeading>
<MeshHeading><DescriptorName UI="D2">Myocardial Infarction</DescriptorName></MeshHeading></MeshHeadingList>
<CommentsCorrectionsList><CommentsCorrections RefType="Cites"><RefSource>X</RefSource><PMID Version="1">999</PMID></CommentsCorrections></CommentsCorrectionsList>
</MedlineCitation><PubmedData/></PubmedArticle>
<PubmedArticle><MedlineCitation><PMID Version="1">222</PMID>
<Article><Journal><JournalIssue><PubDate><MedlineDate>2018 Nov-Dec</MedlineDate></PubDate></JournalIssue>
<Title>Kidney journal</Title></Journal>
<ArticleTitle>[A letter without abstract].</ArticleTitle></Article></MedlineCitation></PubmedArticle>
<PubmedArticle><MedlineCitation><PMID Version="1">333</PMID>
<Article><Journal><Title>Liver journal</Title></Journal><ArticleTitle>Hepatitis C cure.</ArticleTitle>
<Abstract><AbstractText>Direct-acting antivirals cure most patients.</AbstractText></Abstract></Article>
</MedlineCitation></PubmedArticle>
<DeleteCitation><PMID Version="1">111</PMID><PMID Version="1">444</PMID></DeleteCitation>
</PubmedArticleSet>
"""


def _jats(pmc: str = "3166277", pmid: str = "21810267") -> str:
    return JATS.replace("{pmc}", pmc).replace("{pmid}", pmid)


def cfg_for(tmp_path: Path, sources: list[dict], **kw) -> CorpusConfig:
    kw.setdefault("min_chars", 10)
    return CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", sources=sources, **kw)


def stats_of(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())["sources"]


def exclusions(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "exclusions.jsonl").read_text().splitlines()]


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- JATS -------------------------------------------------------------------------------

def test_jats_text_and_metadata(tmp_path):
    path = tmp_path / "a.nxml"
    path.write_text(_jats(), encoding="utf-8")
    [doc] = read_jats(path, "papers")
    assert doc.text == JATS_TEXT
    assert doc.id == "PMC3166277" and doc.error is None
    assert doc.metadata == {"pmid": "21810267", "pmcid": "PMC3166277", "doi": "10.1000/test.3166277",
                            "journal": "Journal of Test Medicine", "year": 2010}
    [doc] = read_jats(path, "papers", keep_captions=True)
    assert doc.text == JATS_CAPTIONS


def test_jats_package_and_bad_members(tmp_path):
    good = _tar(tmp_path / "pkg.tar.gz", {"PMC1/a.nxml": _jats("1").encode(), "PMC1/a.pdf": b"%PDF-1.4",
                                          "PMC2/b.xml": _jats("2").encode()})
    events = Counter()
    docs = list(read_jats(good, "p", events=events))
    assert [d.id for d in docs] == ["PMC1", "PMC2"] and docs[1].text == JATS_TEXT
    assert events == {"tar_members_skipped": 1}
    bad = _tar(tmp_path / "bad.tar.gz", {"x.nxml": b"<article>\n<body>\n<p>broken</body>", "y.xml": b"<root/>"})
    docs = list(read_jats(bad, "p"))
    assert [d.error for d in docs] == ["bad_xml", "not_jats"]
    assert docs[0].line is None and docs[0].id == f"{bad}:x.nxml:3" and docs[0].file == str(bad)
    assert "member 'x.nxml': malformed XML: mismatched tag: line 3" in docs[0].detail
    assert docs[1].id == f"{bad}:y.xml" and "member 'y.xml'" in docs[1].detail and "<root>" in docs[1].detail
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:-40])
    docs = list(read_jats(cut, "p"))
    assert docs[-1].error == "bad_archive" and docs[-1].file == str(cut) and "truncated" in docs[-1].detail


# --- MEDLINE ----------------------------------------------------------------------------

def test_medline_citations(tmp_path):
    path = tmp_path / "pubmed.xml.gz"
    path.write_bytes(gzip.compress(MEDLINE.encode()))
    events = Counter()
    docs = list(read_medline(path, "abstracts", events))
    assert [(d.id, d.drop) for d in docs] == [("PMID:111", None), ("PMID:222", "no_abstract"), ("PMID:333", None)]
    assert docs[0].text == ("Beta blockers after infarction.\nBACKGROUND\nBeta blockers are widely used.\n"
                            "RESULTS\nMortality fell.")
    assert docs[0].metadata == {"pmid": "111", "year": 2019, "journal": "Heart journal",
                                "mesh": ["Adrenergic beta-Antagonists", "Myocardial Infarction"]}
    assert docs[1].metadata["year"] == 2018 and "A letter without abstract" in docs[1].detail
    assert docs[2].text == "Hepatitis C cure.\nDirect-acting antivirals cure most patients."
    assert events == {"deleted_citations": 2, "deleted_after_kept": 1}


def test_medline_truncated_and_malformed(tmp_path):
    data = gzip.compress(MEDLINE.encode())
    cut = tmp_path / "cut.xml.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    docs = list(read_medline(cut, "m"))
    assert docs[-1].error == "bad_gzip" and "truncated" in docs[-1].detail
    assert all(d.error is None for d in docs[:-1])
    broken = tmp_path / "broken.xml"
    broken.write_text(MEDLINE.replace("</ArticleTitle></Article>", "</Article>", 1), encoding="utf-8")
    docs = list(read_medline(broken, "m"))
    line = next(i for i, x in enumerate(MEDLINE.splitlines(), 1) if "[A letter" in x)
    assert [d.error for d in docs] == [None, "bad_xml"] and docs[1].line == line == 18
    assert "mismatched tag" in docs[1].detail


# --- S2ORC ------------------------------------------------------------------------------

OLD = {"paper_id": "77", "metadata": {"title": "Statins and stroke", "pmc_id": "PMC555", "pubmed_id": "12",
                                      "year": 2015},
       "abstract": [{"text": "Statins lower stroke risk.", "section": "Abstract"}],
       "body_text": [{"text": "Stroke is common.", "section": "Introduction"},
                     {"text": "It kills.", "section": "Introduction"},
                     {"text": "We pooled trials.", "section": "Methods"}]}
OLD_TOP = {"paper_id": "78", "pmcid": "556", "title": "Aspirin", "abstract": "Aspirin thins blood.", "body_text": []}
_T = "Insulin pumps\nPumps improve control.\n1 Background\nDiabetes is chronic.\nPumps are small.\n[1] A ref."


def _span(part: str) -> dict:
    return {"start": _T.index(part), "end": _T.index(part) + len(part)}


NEW = {"corpusid": 99, "externalids": {"pubmedcentral": "557", "pubmed": "13", "doi": "10.1/x"},
       "content": {"text": _T, "annotations": {  # annotations are JSON strings, paragraphs out of order
           "title": json.dumps([_span("Insulin pumps")]),
           "abstract": json.dumps([_span("Pumps improve control.")]),
           "sectionheader": json.dumps([{**_span("1 Background"), "attributes": {"n": "1"}}]),
           "paragraph": json.dumps([_span("Pumps are small."), _span("Diabetes is chronic.")]),
           "bibentry": json.dumps([_span("[1] A ref.")])}}}
NO_PMC = {"corpusid": 100, "externalids": {"pubmedcentral": None}, "content": {"text": "No PMC id here at all."}}


def test_s2orc_both_layouts(tmp_path):
    path = tmp_path / "s2orc.jsonl"
    lines = [json.dumps(OLD), json.dumps(OLD_TOP), json.dumps(NEW), json.dumps(NO_PMC), "{not json",
             json.dumps({"paper_id": "5", "pmc_id": "PMC9"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = list(read_s2orc(path, "s2"))
    assert [(d.id, d.error or d.drop) for d in docs] == [
        ("PMC555", None), ("PMC556", None), ("PMC557", None), ("s2:100", "no_pmcid"),
        (f"{path}:5", "bad_json"), ("PMC9", "missing_text")]
    assert docs[0].text == ("Statins and stroke\nStatins lower stroke risk.\nIntroduction\nStroke is common.\n"
                            "It kills.\nMethods\nWe pooled trials.")
    assert docs[0].metadata == {"s2_id": "77", "pmcid": "PMC555", "pmid": "12", "year": 2015}
    assert docs[1].text == "Aspirin\nAspirin thins blood."
    assert docs[2].text == _T.removesuffix("\n[1] A ref.")
    assert docs[2].metadata == {"s2_id": "99", "pmcid": "PMC557", "pmid": "13", "doi": "10.1/x"}
    assert docs[4].line == 5 and "not JSON" in docs[4].detail
    assert [d.drop for d in read_s2orc(path, "s2", require_pmcid=False)][3] is None


# S2ORC 2020 (20200705v1): metadata and pdf_parses shards, joined on paper_id
META = [
    {"paper_id": "1", "pmc_id": "PMC11", "pubmed_id": "21", "title": "Statins and stroke", "year": 2015,
     "abstract": "Statins lower stroke risk.", "has_pdf_parse": True},
    {"paper_id": "2", "pmc_id": "PMC12", "title": "Aspirin", "abstract": "Aspirin thins blood.",
     "has_pdf_parse": False},
    {"paper_id": "3", "pmc_id": None, "title": "Not in PMC", "abstract": "No PMC id here.", "has_pdf_parse": True},
    {"paper_id": "4", "pmc_id": "PMC14", "title": "Insulin pumps", "abstract": None, "has_pdf_parse": True},
]


def _parse(pid: str, *paragraphs: tuple[str, str], abstract: str = "From the PDF.") -> dict:
    return {"paper_id": pid, "_pdf_hash": "x", "abstract": [{"section": "Abstract", "text": abstract}],
            "body_text": [{"section": sec, "text": t, "cite_spans": []} for sec, t in paragraphs],
            "bib_entries": {"BIBREF0": {"title": "A cited paper"}}}


PARSES = [_parse("3", ("Intro", "Body of the paper without a PMC id.")),
          _parse("1", ("Introduction", "Stroke is common."), ("Introduction", "It kills."), ("Methods", "We pooled.")),
          _parse("9", ("Intro", "A parse whose metadata is in no shard.")),
          _parse("4", ("", "Pumps are small."), abstract="Pumps improve control."),
          _parse("1", ("Intro", "A second parse of paper 1."))]


def _jsonl_gz(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    return path


def _release(root: Path) -> tuple[Path, Path, Path]:
    """metadata/metadata_{0,1}.jsonl.gz and pdf_parses/pdf_parses_0.jsonl.gz (shard 1 has no parses file)."""
    meta0 = _jsonl_gz(root / "metadata" / "metadata_0.jsonl.gz", META)
    parses0 = _jsonl_gz(root / "pdf_parses" / "pdf_parses_0.jsonl.gz", PARSES)
    meta1 = _jsonl_gz(root / "metadata" / "metadata_1.jsonl.gz",
                      [{"paper_id": "5", "pmc_id": "15", "title": "Fever", "abstract": "Fever is common."}])
    return meta0, parses0, meta1


def test_s2orc_2020_shards_paired_in_one_job(tmp_path):
    meta0, parses0, meta1 = _release(tmp_path / "s2orc")
    inputs = resolve_paths([str(tmp_path / "s2orc")], "s2orc")
    assert [(f.path, f.shard, f.paired) for f in inputs] == [(meta0, "metadata", parses0), (meta1, "metadata", None)]
    cfg = cfg_for(tmp_path, [{"name": "s2", "paths": [str(tmp_path / "s2orc")], "format": "s2orc"}])
    jobs = make_jobs(cfg, {"s2": inputs})
    assert [[p for f in j.files for p in f.paths()] for j in jobs] == [[meta0, parses0], [meta1]]
    flat = tmp_path / "flat"  # the shared sample's naming: both halves in one folder
    for name in ("metadata_sample.jsonl", "pdf_parses_sample.jsonl", "pdf_parses_other.jsonl", "papers.jsonl"):
        (flat / name).parent.mkdir(exist_ok=True)
        (flat / name).write_text(json.dumps(OLD) + "\n", encoding="utf-8")
    assert [(f.path.name, f.shard, f.paired and f.paired.name) for f in resolve_paths([str(flat)], "s2orc")] == [
        ("metadata_sample.jsonl", "metadata", "pdf_parses_sample.jsonl"), ("papers.jsonl", "", None),
        ("pdf_parses_other.jsonl", "pdf_parses", None)]
    (flat / "metadata_sample.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    with pytest.raises(UserError, match="two S2ORC metadata files with the shard name 'sample'"):
        resolve_paths([str(flat)], "s2orc")


def test_s2orc_2020_join(tmp_path):
    meta0, parses0, _ = _release(tmp_path)
    events = Counter()
    docs = list(read_shards(meta0, parses0, "s2", events=events))
    assert [(d.id, d.file, d.line, d.drop) for d in docs] == [
        ("s2:9", str(parses0), 3, "parse_without_metadata"), ("s2:1", str(parses0), 5, "duplicate_parse"),
        ("PMC11", str(meta0), 1, None), ("PMC12", str(meta0), 2, None), ("s2:3", str(meta0), 3, "no_pmcid"),
        ("PMC14", str(meta0), 4, None)]
    assert docs[2].text == ("Statins and stroke\nStatins lower stroke risk.\nIntroduction\nStroke is common.\n"
                            "It kills.\nMethods\nWe pooled.")  # the metadata's abstract, not the PDF's
    assert docs[2].metadata == {"s2_id": "1", "pmcid": "PMC11", "pmid": "21", "year": 2015}
    assert docs[3].text == "Aspirin\nAspirin thins blood."  # no parse: title + abstract
    assert docs[5].text == "Insulin pumps\nPumps improve control.\nPumps are small."  # no metadata abstract
    assert str(meta0) in docs[0].detail
    assert events == {"parses_joined": 3, "metadata_without_parse": 1}
    alone = list(read_shards(None, parses0, "s2", events=Counter()))  # a parse shard without its metadata
    assert [d.drop for d in alone] == ["parse_without_metadata"] * 5


def test_stage_s2orc_2020_release(tmp_path):
    root = tmp_path / "s2orc"
    meta0, parses0, meta1 = _release(root)
    out = run(cfg_for(tmp_path, [{"name": "s2", "paths": [str(root)], "format": "s2orc"}]))
    st = stats_of(out)["s2"]
    # 5 metadata rows (4 kept, 1 no_pmcid) + 5 parse rows (3 joined, 1 without metadata, 1 duplicate)
    assert (st["files"], st["documents_in"], st["kept"]) == (3, 7, 4)
    assert st["dropped_by_reason"] == {"duplicate_parse": 1, "no_pmcid": 1, "parse_without_metadata": 1}
    assert st["events"] == {"metadata_without_parse": 2, "parses_joined": 3}
    excl = {e["reason"]: (e["id"], e["file"], e["line"]) for e in exclusions(out)}
    assert excl == {"parse_without_metadata": ("s2:9", str(parses0), 3), "duplicate_parse": ("s2:1", str(parses0), 5),
                    "no_pmcid": ("s2:3", str(meta0), 3)}
    manifest, shards = read_corpus(out)
    assert shards["s2"].num_docs == 4
    assert {str(meta0), str(parses0), str(meta1)} <= {i["path"] for i in manifest["inputs"]}


@pytest.mark.parametrize("bad,line,message", [("{not json", 2, "not JSON"), ('{"body_text": []}', 2, "no paper_id"),
                                              ('{"paper_id": "1", "body_text": "x"}', 2, "not a list")])
def test_stage_stop_on_bad_parse_line(tmp_path, bad, line, message):
    root = tmp_path / "s2orc"
    _jsonl_gz(root / "metadata" / "metadata_0.jsonl.gz", META)
    parses = _jsonl_gz(root / "pdf_parses" / "pdf_parses_0.jsonl.gz", [PARSES[1], bad])
    with pytest.raises(UserError, match=message) as err:
        run(cfg_for(tmp_path, [{"name": "s2", "paths": [str(root)], "format": "s2orc"}]))
    assert err.value.path == str(parses) and err.value.line == line


# --- the corpus stage: detection, drops, bad input ---------------------------------------

def test_detection_by_suffix_and_root(tmp_path):
    (tmp_path / "a.xml").write_text(_jats(), encoding="utf-8")
    (tmp_path / "m.xml").write_text(MEDLINE, encoding="utf-8")
    (tmp_path / "u.xml").write_text("<catalog/>", encoding="utf-8")
    (tmp_path / "LICENSE.txt").write_text("licence", encoding="utf-8")
    for name in ("b.nxml", "c.xml.gz", "d.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    assert {Path(f.path).name: f.format for f in resolve_paths([str(tmp_path)], "auto")} == {
        "a.xml": "jats", "m.xml": "medline", "u.xml": "xml", "b.nxml": "jats", "c.xml.gz": "medline",
        "d.tar.gz": "jats"}
    assert format_of(tmp_path / "m.xml", "s2orc") == "s2orc"
    [gone] = resolve_paths([str(tmp_path / "gone.xml")], "auto")
    assert gone.missing and gone.problem == "file not found"
    assert [Path(f.path).name for f in resolve_paths([str(tmp_path)], "medline")] == ["c.xml.gz", "m.xml", "u.xml"]


def test_stage_counts_and_skip(tmp_path):
    pkg = _tar(tmp_path / "pmc.tar.gz", {"a.nxml": _jats("1").encode(), "b.nxml": b"<article><p>x</article>"})
    medline = tmp_path / "m.xml.gz"
    medline.write_bytes(gzip.compress(MEDLINE.encode()))
    s2 = tmp_path / "s.jsonl"
    s2.write_text("\n".join(json.dumps(x) for x in (OLD, NO_PMC)) + "\n", encoding="utf-8")
    unknown = tmp_path / "u.xml"
    unknown.write_text("<catalog/>", encoding="utf-8")
    out = run(cfg_for(tmp_path, [
        {"name": "papers", "paths": [str(pkg), str(unknown)]},
        {"name": "abstracts", "paths": [str(medline)]},
        {"name": "s2", "paths": [str(s2)], "format": "s2orc"}], on_error="skip"))
    stats = stats_of(out)
    assert stats["papers"]["kept"] == 1 and stats["papers"]["dropped_by_reason"] == {"bad_xml": 1, "unknown_xml": 1}
    assert stats["abstracts"]["kept"] == 2 and stats["abstracts"]["dropped_by_reason"] == {"no_abstract": 1}
    assert stats["abstracts"]["events"] == {"deleted_after_kept": 1, "deleted_citations": 2}
    assert stats["s2"]["kept"] == 1 and stats["s2"]["dropped_by_reason"] == {"no_pmcid": 1}
    excl = {(e["source"], e["reason"]): e for e in exclusions(out)}
    assert excl[("abstracts", "no_abstract")]["id"] == "PMID:222"
    assert "member 'b.nxml'" in excl[("papers", "bad_xml")]["detail"]
    assert excl[("papers", "bad_xml")]["file"] == str(pkg)
    _, shards = read_corpus(out)
    assert shards["papers"].num_docs == 1 and shards["abstracts"].num_docs == 2


@pytest.mark.parametrize("name,content,message,line", [
    ("bad.nxml", b"<article>\n<front>\n</article>", "mismatched tag", 3),
    ("cut.xml.gz", gzip.compress(MEDLINE.encode())[:300], "truncated or corrupt gzip", None),
    ("u.xml", b"<catalog/>", "root element <catalog>", None),
])
def test_stage_stop_names_file(tmp_path, name, content, message, line):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)]}]))
    assert err.value.path == str(path) and err.value.line == line


def test_stage_stop_on_bad_s2orc_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(OLD) + "\n" + json.dumps({"paper_id": "1", "pmc_id": "2"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="no text") as err:
        run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)], "format": "s2orc"}]))
    assert err.value.path == str(path) and err.value.line == 2


# --- the real samples -------------------------------------------------------------------

@pytest.mark.shared
@pytest.mark.slow
def test_real_pubmed_corpus(tmp_path, shared_data):
    corpus = shared_data / "corpus"
    folders = {"papers": corpus / "pmc_oa", "abstracts": corpus / "medline", "books": corpus / "textbook"}
    if not all(f.is_dir() for f in folders.values()):
        pytest.skip("a corpus sample folder is absent")
    out = run(cfg_for(tmp_path, [{"name": n, "paths": [str(f)]} for n, f in folders.items()], min_chars=50))
    stats = stats_of(out)
    n_papers = len(list(folders["papers"].glob("*.nxml")))  # 11 in the sample (8 before 3 were added)
    assert n_papers >= 8
    assert stats["papers"]["files"] == n_papers and stats["papers"]["kept"] == n_papers
    assert stats["papers"]["dropped"] == 0
    assert stats["abstracts"]["documents_in"] == 604 and stats["abstracts"]["kept"] == 526
    assert stats["abstracts"]["dropped_by_reason"] == {"no_abstract": 78}
    assert stats["abstracts"]["events"]["deleted_citations"] == 1
    assert stats["books"]["files"] == 1 and stats["books"]["kept"] > 150  # LICENSE.txt is not a book
    for path in sorted(folders["papers"].glob("*.nxml")):
        [doc] = read_jats(path, "papers")
        refs = [" ".join("".join(r.itertext()).split()) for r in ET.parse(path).getroot().iter("ref")]
        titles = [" ".join("".join(t.itertext()).split()) for r in ET.parse(path).getroot().iter("ref")
                  for t in r.iter("article-title")]
        assert refs and not any(ref in doc.text for ref in refs), path.name
        assert not any(t in doc.text for t in titles if len(t) > 40), path.name
        assert not re.search(r"^\d+\.? [A-Z][a-z]+ [A-Z]{1,3}(, [A-Z][a-z]+ [A-Z]{1,3})+", doc.text, re.M)
        assert doc.metadata["pmcid"].startswith("PMC") and doc.metadata["year"] > 2000


@pytest.mark.shared
def test_real_s2orc_releases(tmp_path, shared_data, tiny_tokenizer):
    """The 2020 sample (metadata + pdf_parses joined) keeps PMC1950857 with its body; the 2019 one still reads."""
    v2020, v2019 = shared_data / "corpus" / "s2orc" / "v20200705", shared_data / "corpus" / "s2orc" / "v20190928"
    if not (v2020 / "metadata_sample.jsonl").is_file() or not (v2019 / "papers_sample.jsonl").is_file():
        pytest.skip("the S2ORC samples are absent")
    out = run(cfg_for(tmp_path, [{"name": "s2020", "paths": [str(v2020)], "format": "s2orc"},
                                 {"name": "s2019", "paths": [str(v2019)], "format": "s2orc"}], min_chars=50))
    st = stats_of(out)["s2020"]
    # 1,000 metadata rows (34 with a PMC id), 3 parses, each with its metadata row
    assert (st["files"], st["documents_in"], st["kept"], st["dropped_by_reason"]) == (2, 1000, 34, {"no_pmcid": 966})
    assert st["events"]["parses_joined"] == 3 and st["events"]["metadata_without_parse"] == 997
    assert stats_of(out)["s2019"]["kept"] == 2
    _, shards = read_corpus(out)
    docs = [tiny_tokenizer.decode(shards["s2020"].doc(i)[:-1].tolist()) for i in range(shards["s2020"].num_docs)]
    [paper] = [d for d in docs if d.startswith("Adult and larval photoreceptors use different mechanisms")]
    body = next(json.loads(x) for x in (v2020 / "pdf_parses_sample.jsonl").open() if '"18980463"' in x[:40])
    assert body["body_text"][-1]["text"][:60] in paper and len(paper) > 30000
    report = json.loads((out / "corpus_report.json").read_text())
    assert [(Path(s["path"]).name, s["reason"]) for s in report["skipped_inputs"]] == [
        ("example_paper.json", "other_format")]
