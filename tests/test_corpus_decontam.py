"""Decontamination in the corpus stage: a MEDLINE-like abstract that is a PubMedQA context."""
from __future__ import annotations

import json

import pytest

from pmcllama.corpus import CorpusConfig, run
from pmcllama.data.shards import read_corpus
from pmcllama.errors import UserError

CONTEXT = ("Beta blockers reduce mortality after myocardial infarction in randomised trials, but their benefit "
           "in patients with preserved ejection fraction treated with modern reperfusion remains uncertain.")
QUESTION = "Do beta blockers still reduce mortality after myocardial infarction with preserved ejection fraction?"
OTHER = ("Insulin is a peptide hormone produced by the beta cells of the pancreatic islets and it regulates "
         "the metabolism of carbohydrates, fats and protein by promoting the absorption of glucose.")


def setup(tmp_path):
    bench = tmp_path / "ori_pqal.json"
    bench.write_text(json.dumps({"2512": {"QUESTION": QUESTION, "CONTEXTS": ["Short context.", CONTEXT],
                                          "final_decision": "maybe"}}), encoding="utf-8")
    rows = [{"id": "pmid-1", "text": "Background. " + CONTEXT.upper() + " Methods follow here."},
            {"id": "pmid-2", "text": OTHER},
            {"id": "pmid-3", "text": "We asked: " + QUESTION + " The answer is unclear."}]
    corpus = tmp_path / "abstracts.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return bench, corpus


@pytest.mark.parametrize("action", ["drop", "mark"])
def test_pubmedqa_context_found(tmp_path, action):
    bench, corpus = setup(tmp_path)
    cfg = CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", decontaminate=[f"pubmedqa:{bench}"],
                       decontam_action=action, sources=[{"name": "medline", "paths": [str(corpus)]}])
    out = run(cfg)
    report = [json.loads(x) for x in (out / "decontamination.jsonl").read_text().splitlines()]
    assert [(r["id"], r["benchmark"], r["item"], r["action"]) for r in report] == [
        ("pmid-1", "ori_pqal.json", "2512", action), ("pmid-3", "ori_pqal.json", "2512", action)]
    stats = json.loads((out / "stats.json").read_text())
    manifest, shards = read_corpus(out)
    assert stats["decontamination"]["documents"] == 2 and stats["decontamination"]["ngram"] == 13
    assert stats["decontamination"]["benchmarks"]["ori_pqal.json"]["items_found"] == 1
    assert manifest["counts"]["documents_contaminated"] == 2
    assert str(bench) in [i["path"] for i in manifest["inputs"]]
    src = stats["sources"]["medline"]
    if action == "drop":
        assert src["kept"] == 1 and src["dropped_by_reason"] == {"contaminated": 2}
        assert shards["medline"].num_docs == 1
        excl = [json.loads(x) for x in (out / "exclusions.jsonl").read_text().splitlines()]
        assert [(e["id"], e["reason"], e["detail"]) for e in excl] == [
            ("pmid-1", "contaminated", "ori_pqal.json item 2512"), ("pmid-3", "contaminated", "ori_pqal.json item 2512")]
    else:
        assert src["kept"] == 3 and src["dropped"] == 0 and shards["medline"].num_docs == 3
        assert [r["shard_doc"] for r in report] == [0, 2]


def test_no_benchmarks_no_report_and_missing_file(tmp_path):
    bench, corpus = setup(tmp_path)
    out = run(CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama",
                           sources=[{"name": "medline", "paths": [str(corpus)]}]))
    assert not (out / "decontamination.jsonl").exists()
    assert "decontamination" not in json.loads((out / "stats.json").read_text())
    with pytest.raises(UserError, match="benchmark file not found"):
        run(CorpusConfig(out=str(tmp_path / "out2"), tokenizer="tiny-llama", decontaminate=[str(tmp_path / "x.json")],
                         sources=[{"name": "medline", "paths": [str(corpus)]}]))


@pytest.mark.shared
def test_real_medline_against_pubmedqa(shared_data, tmp_path):
    """The shared MEDLINE file holds abstracts; the check runs and reports consistently."""
    bench = shared_data / "benchmarks" / "pubmedqa" / "ori_pqal_trainval.json"
    medline = shared_data / "corpus" / "medline"
    out = run(CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", decontaminate=[str(bench)],
                           sources=[{"name": "medline", "paths": [str(medline)]}]))
    stats = json.loads((out / "stats.json").read_text())
    lines = (out / "decontamination.jsonl").read_text().splitlines()
    assert stats["decontamination"]["benchmarks"]["ori_pqal_trainval.json"]["items"] == 500
    assert stats["decontamination"]["documents"] == len({json.loads(x)["id"] for x in lines})
