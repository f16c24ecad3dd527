"""pmcllama's format readers as datatrove readers: the same documents as the corpus stage's
parse, inside datatrove pipelines and executors, shards kept together across tasks, drops
counted and written to an exclusion writer, bad input stopping with file and line, and
folders on a non-local fsspec file system."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import fsspec
import pytest
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.writers import JsonlWriter

from pmcllama.data.datatrove_readers import JatsReader, MedlineReader, PmcllamaReader, S2orcReader
from pmcllama.data.jats import read_jats
from pmcllama.data.medline import read_medline
from pmcllama.data.s2orc import read_shards
from pmcllama.errors import UserError
from test_readers_pubmed import JATS_TEXT, MEDLINE, _jats, _release


def _written(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("*.jsonl.gz")):
        rows += [json.loads(x) for x in gzip.decompress(f.read_bytes()).decode().splitlines()]
    return rows


def _pmc_folder(root: Path) -> Path:
    root.mkdir()
    (root / "a.nxml").write_text(_jats("101", "201"), encoding="utf-8")
    (root / "b.nxml").write_text(_jats("102", "202"), encoding="utf-8")
    (root / "broken.nxml").write_text(_jats("103", "203")[:900], encoding="utf-8")
    (root / "pubmed.xml").write_text(MEDLINE, encoding="utf-8")  # MEDLINE, not JATS: not read
    (root / "README.txt").write_text("about the data", encoding="utf-8")
    return root


def test_jats_reader_in_a_datatrove_pipeline(tmp_path):
    pmc = _pmc_folder(tmp_path / "pmc")
    out, excl, logs = tmp_path / "out", tmp_path / "excluded", tmp_path / "logs"
    reader = JatsReader(str(pmc), source="papers", exclusion_writer=JsonlWriter(str(excl)))
    LocalPipelineExecutor([reader, JsonlWriter(str(out))], tasks=2, logging_dir=str(logs)).run()

    docs = sorted(_written(out), key=lambda d: d["id"])
    expected = [d for name in ("a.nxml", "b.nxml") for d in read_jats(pmc / name, "papers")]
    assert [d["id"] for d in docs] == [d.id for d in expected] == ["PMC101", "PMC102"]
    assert [d["text"] for d in docs] == [d.text for d in expected] == [JATS_TEXT, JATS_TEXT]
    for got, want in zip(docs, expected):
        assert got["metadata"] == {**want.metadata, "source": "papers", "file_path": want.file, "line": None}
    [bad] = _written(excl)
    assert bad["metadata"]["filter_reason"] == "bad_xml" and bad["metadata"]["file_path"] == str(pmc / "broken.nxml")
    assert "malformed XML" in bad["metadata"]["filter_detail"]

    [step] = [s for s in json.loads((logs / "stats.json").read_text()) if s["name"].endswith(JatsReader.name)]
    stats = step["stats"]
    assert stats["input_files"] == 3 and stats["documents"]["total"] == 2
    assert stats["dropped_bad_xml"] == 1 and stats["skipped_other_xml"] == 1 and stats["skipped_not_data"] == 1


def test_s2orc_pairs_stay_on_one_task(tmp_path):
    meta0, parses0, meta1 = _release(tmp_path / "s2orc")
    reader = S2orcReader(str(tmp_path / "s2orc"), source="s2")
    ranks = [list(reader.run(rank=r, world_size=2)) for r in (0, 1)]
    want0 = [d for d in read_shards(meta0, parses0, "s2") if not (d.error or d.drop)]
    want1 = [d for d in read_shards(meta1, None, "s2") if not (d.error or d.drop)]
    assert [[(d.id, d.text) for d in r] for r in ranks] == [[(d.id, d.text) for d in want0],
                                                             [(d.id, d.text) for d in want1]]
    assert "Stroke is common." in ranks[0][0].text  # the body came from the paired pdf_parses shard
    counts = Counter(k for k in reader.stats.stats if k.startswith("dropped_"))
    assert counts and all(reader.stats[k].total > 0 for k in counts)  # no PMC id, no text: counted


def test_limit_skip_and_read_file(tmp_path):
    pmc = _pmc_folder(tmp_path / "pmc")
    assert [d.id for d in JatsReader(str(pmc), skip=1, limit=5).run()] == ["PMC102"]
    assert [d.id for d in JatsReader(str(pmc), limit=1).run()] == ["PMC101"]
    assert [d.id for d in JatsReader(str(pmc)).read_file("b.nxml")] == ["PMC102"]
    with pytest.raises(UserError, match="not read by this reader \\(other_xml\\)"):
        list(JatsReader(str(pmc)).read_file("pubmed.xml"))


def test_stop_names_the_file_and_line(tmp_path):
    pmc = _pmc_folder(tmp_path / "pmc")
    with pytest.raises(UserError) as e:
        list(JatsReader(str(pmc), on_error="stop").run())
    assert e.value.path == str(pmc / "broken.nxml") and e.value.line is not None and "malformed XML" in str(e.value)
    with pytest.raises(ValueError, match="on_error"):
        JatsReader(str(pmc), on_error="ignore")
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        PmcllamaReader(str(pmc), format="pdf")


def test_remote_folder(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe("/pubmed/x/updates.xml.gz", gzip.compress(MEDLINE.encode()))
    fs.pipe("/pubmed/x/cut.xml", MEDLINE[:1500].encode())
    try:
        reader = MedlineReader("memory://pubmed", exclusion_writer=None)
        docs = list(reader.run())
        (tmp_path / "cut.xml").write_text(MEDLINE[:1500], encoding="utf-8")
        (tmp_path / "updates.xml.gz").write_bytes(gzip.compress(MEDLINE.encode()))
        want = [d for name in ("cut.xml", "updates.xml.gz") for d in read_medline(tmp_path / name, "medline")
                if not (d.error or d.drop)]
        assert [(d.id, d.text) for d in docs] == [(d.id, d.text) for d in want] and len(docs) == 3
        assert [d.metadata["file_path"] for d in docs] == ["memory:///pubmed/x/cut.xml"] + [
            "memory:///pubmed/x/updates.xml.gz"] * 2
        assert reader.stats["dropped_bad_xml"].total == 1 and reader.stats["dropped_no_abstract"].total == 2
        with pytest.raises(UserError) as e:
            list(MedlineReader("memory://pubmed", on_error="stop").run())
        assert e.value.path == "memory:///pubmed/x/cut.xml"  # the remote name, not the temporary copy
        with pytest.raises(ValueError, match="remote folder needs the format"):
            PmcllamaReader("memory://pubmed")
    finally:
        fs.rm("/pubmed", recursive=True)


@pytest.mark.shared
def test_real_pmc_and_medline(shared_data):
    pmc, medline = shared_data / "corpus" / "pmc_oa", shared_data / "corpus" / "medline"
    if not (pmc.is_dir() and medline.is_dir()):
        pytest.skip("the PMC or MEDLINE sample folder is absent")
    docs = list(JatsReader(str(pmc)).run())
    want = [d for p in sorted(pmc.glob("*.nxml")) for d in read_jats(p, "jats")]
    assert [(d.id, d.text) for d in docs] == [(d.id, d.text) for d in want] and len(docs) >= 8
    reader = MedlineReader(str(medline))
    assert sum(1 for _ in reader.run()) == 526  # as the corpus stage reads it (test_real_pubmed_corpus)
    assert reader.stats["dropped_no_abstract"].total == 78 and reader.stats["deleted_citations"].total == 1


def test_readme_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("**The readers in your own datatrove pipeline.**", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    _pmc_folder(tmp_path / "pmc_oa")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert sorted(d["id"] for d in _written(tmp_path / "pmc_text")) == ["PMC101", "PMC102"]
    assert [d["metadata"]["filter_reason"] for d in _written(tmp_path / "pmc_dropped")] == ["bad_xml"]
