"""The stage's files load with `datasets.load_dataset("json", ...)`, as the issue requires."""
from __future__ import annotations

import json

import pytest

from pmcllama.config import build_config
from pmcllama.instructions import InstructionsConfig, run

MEDQA = {"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "Vitamin A", "B": "Vitamin B12",
         "C": "Vitamin C", "D": "Vitamin D"}, "answer_idx": "C"}


def test_outputs_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps(MEDQA) + "\n" + json.dumps({**MEDQA, "question": "Scurvy again?"}) + "\n")
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"instruction": "Hi doctor", "input": "I cough.", "output": "Rest."}]))
    cfg = build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "val_fraction": 0.2, "sources": [
        {"name": "q", "format": "medqa", "paths": [str(q)]}, {"name": "a", "format": "alpaca", "paths": [str(a)]},
        {"name": "icd", "format": "kg", "ontology": "icd10", "root": "A00-A09", "limit": 12, "probe_terms": 3}]})
    out = run(cfg)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    for name, n in (("train.jsonl", counts["train"]), ("val.jsonl", counts["val"]), ("alpaca.json", counts["train"]),
                    ("probe.jsonl", counts["probe"])):
        ds = datasets.load_dataset("json", data_files=str(out / name), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
        assert len(ds) == n > 0, name
    ds = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds.column_names) == {"id", "source", "task", "messages"}
    assert ds[0]["messages"][-1]["role"] == "assistant"
