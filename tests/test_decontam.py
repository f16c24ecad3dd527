"""Decontamination: n-gram index over benchmark files, and its use in the instructions stage."""
from __future__ import annotations

import json

import pytest

from pmcllama.config import build_config
from pmcllama.data.decontam import NgramIndex, build_index, parse_spec, words
from pmcllama.errors import UserError
from pmcllama.instructions import InstructionsConfig, run

QUESTION = ("A 45-year-old man presents with crushing substernal chest pain radiating to the left arm "
            "for two hours. Which of the following is the most appropriate next step?")
Q_WORDS = words(QUESTION)


def write(path, data):
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def medqa_file(tmp_path):
    return write(tmp_path / "medqa_test.jsonl", [
        {"question": QUESTION, "options": {"A": "ECG", "B": "CT", "C": "MRI", "D": "Discharge"}, "answer_idx": "A"}])


def test_words_ignore_case_and_punctuation():
    assert words("Crushing, SUBSTERNAL chest-pain (2 hours)!") == ["crushing", "substernal", "chest", "pain", "2",
                                                                    "hours"]


def test_index_13_vs_12_gram():
    index = NgramIndex(13)
    index.add("bench", "q1", QUESTION)
    assert len(index) == len(Q_WORDS) - 12
    thirteen = "Some text. " + " ".join(Q_WORDS[3:16]).upper() + " more text"
    twelve = "Some text. " + " ".join(Q_WORDS[3:15]) + " more text"
    assert index.find(thirteen) == [("bench", "q1")] and index.contaminated(thirteen)
    assert index.find(twelve) == [] and not index.contaminated(twelve)
    punctuated = ", ".join(Q_WORDS[:13]).title() + "?!"
    assert index.find(["unrelated", punctuated]) == [("bench", "q1")]


def test_index_reports_every_item_and_short_ones():
    index = NgramIndex(4)
    index.add("a", "1", "alpha beta gamma delta")
    index.add("b", "2", ["alpha beta gamma delta epsilon", "zeta"])
    index.add("b", "3", "too short")
    assert index.find("x alpha beta gamma delta epsilon") == [("a", "1"), ("b", "2")]
    assert index.stats == {"a": {"items": 1, "short": 0, "ngrams": 1}, "b": {"items": 2, "short": 1, "ngrams": 2}}


def test_build_index_detects_formats(tmp_path):
    medqa = medqa_file(tmp_path)
    medmcqa = write(tmp_path / "dev.json", "".join(json.dumps(r) + "\n" for r in [
        {"id": "u1", "question": "one two three four five", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
         "cop": 1, "exp": None}]))
    pubmedqa = write(tmp_path / "ori_pqal.json", {"77": {"QUESTION": "short question here now",
                                                         "CONTEXTS": ["ctx words are also indexed"],
                                                         "final_decision": "no"}})
    mmlu = write(tmp_path / "anatomy_test.csv", "six seven eight nine ten,a,b,c,d,A\n")
    generic = write(tmp_path / "other.jsonl", [{"id": 5, "question": "eleven twelve thirteen fourteen"}])
    index = build_index([medqa, medmcqa, pubmedqa, mmlu, f"jsonl:{generic}"], n=4)
    assert set(index.stats) == {"medqa_test.jsonl", "dev.json", "ori_pqal.json", "anatomy_test.csv", "other.jsonl"}
    assert index.find("x one two three four") == [("dev.json", "u1")]
    assert index.find("CTX words are also") == [("ori_pqal.json", "77")]
    assert index.find("six seven eight nine") == [("anatomy_test.csv", "line-1")]
    assert index.find("eleven twelve thirteen fourteen") == [("other.jsonl", "5")]
    assert index.find(" ".join(Q_WORDS[-4:])) == [("medqa_test.jsonl", "line-1")]


def test_specs_and_errors(tmp_path):
    assert parse_spec("medqa:/x/a.jsonl") == ("medqa", tmp_path.__class__("/x/a.jsonl"))
    assert parse_spec("/x/c:d.jsonl")[0] is None
    unknown = write(tmp_path / "u.jsonl", [{"text": "hello"}])
    with pytest.raises(UserError, match="cannot tell the benchmark format"):
        build_index([unknown])
    with pytest.raises(UserError, match="cannot tell the benchmark format"):
        build_index([write(tmp_path / "mts.csv", "ID,section_header,section_text,dialogue\n1,CC,x,y\n")])
    bad = write(tmp_path / "q.jsonl", [{"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "C"}])
    with pytest.raises(UserError, match="answer_idx 'C'") as err:
        build_index([bad])
    assert err.value.line == 1
    with pytest.raises(UserError, match="not found"):
        build_index([str(tmp_path / "missing.jsonl")])


def test_stage_drops_and_reports(tmp_path):
    bench = medqa_file(tmp_path)
    rows = [
        {"instruction": "Explain chest pain.", "input": "",
         "output": "Classic vignette: " + " ".join(Q_WORDS[2:15]).upper() + "."},  # 13-gram: dropped
        {"instruction": "Explain chest pain again.", "input": "",
         "output": "Near miss: " + ", ".join(Q_WORDS[2:14]) + "."},  # 12-gram: kept
        {"instruction": QUESTION.replace(" ", "  ").lower(), "input": "", "output": "ECG."},  # prompt: dropped
        {"instruction": "What is aspirin?", "input": "", "output": "An antiplatelet drug."},
    ]
    src = write(tmp_path / "train.json", rows)
    cfg = build_config(InstructionsConfig, {
        "out": str(tmp_path / "out"), "val_fraction": 0, "decontaminate": [f"medqa:{bench}"],
        "sources": [{"name": "a", "format": "alpaca", "paths": [src]}]})
    out = run(cfg)
    kept = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert kept == ["a-1", "a-3"]
    report = [json.loads(line) for line in (out / "decontamination.jsonl").read_text().splitlines()]
    assert report == [{"id": "a-0", "source": "a", "benchmark": "medqa_test.jsonl", "item": "line-1"},
                      {"id": "a-2", "source": "a", "benchmark": "medqa_test.jsonl", "item": "line-1"}]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["decontaminated"] == 2 and manifest["counts"]["rejected"] == 0
    assert bench in [i["path"] for i in manifest["inputs"]]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sources"]["a"]["decontaminated"] == 2
    assert stats["decontamination"] == {"ngram": 13, "benchmarks": {
        "medqa_test.jsonl": {"items": 1, "short": 0, "ngrams": len(Q_WORDS) - 12}}}


def test_stage_ngram_option_and_missing_file(tmp_path):
    bench = medqa_file(tmp_path)
    src = write(tmp_path / "t.jsonl", [{"instruction": "Q", "output": " ".join(Q_WORDS[:8])},
                                       {"instruction": "R", "output": "Fine."}])
    cfg = {"out": str(tmp_path / "out"), "val_fraction": 0, "decontaminate": [bench], "decontam_ngram": 8,
           "sources": [{"name": "a", "format": "alpaca", "paths": [src]}]}
    out = run(build_config(InstructionsConfig, cfg))
    assert json.loads((out / "manifest.json").read_text())["counts"]["decontaminated"] == 1
    cfg["decontaminate"] = [str(tmp_path / "nope.jsonl")]
    with pytest.raises(UserError, match="decontaminate: benchmark file not found"):
        run(build_config(InstructionsConfig, cfg))


@pytest.mark.shared
def test_real_benchmarks_index(shared_data, tmp_path):
    bench = shared_data / "benchmarks"
    samples = sorted((bench / "format_samples").iterdir())
    index = build_index([str(bench / "pubmedqa" / "ori_pqal_trainval.json"), *map(str, samples)])
    assert index.stats["ori_pqal_trainval.json"]["items"] == 500
    assert {index.stats[p.name]["items"] for p in samples} == {10}
    pqal = json.loads((bench / "pubmedqa" / "ori_pqal_trainval.json").read_text())
    pmid, rec = next(iter(pqal.items()))
    assert ("ori_pqal_trainval.json", pmid) in index.find(rec["CONTEXTS"][0])
