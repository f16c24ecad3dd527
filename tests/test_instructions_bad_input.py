"""Bad input of the instruction stage: dangling is_a in an OBO file, a file under the wrong
format, answer indexes out of range and empty questions; stop (file and line) or skip."""
from __future__ import annotations

import json

import pytest

from pmcllama.config import build_config
from pmcllama.errors import UserError
from pmcllama.instructions import InstructionsConfig, run

OBO = """format-version: 1.2

[Term]
id: T:1
name: Disease
def: "A disorder." []

[Term]
id: T:2
name: Heart disease
def: "A disease of the heart." []
is_a: T:1 ! Disease

[Term]
id: T:3
name: Arrhythmia
def: "An abnormal heart rhythm." []
is_a: T:2 ! Heart disease
is_a: T:99 ! gone

[Term]
id: T:4
name: Lung disease
def: "A disease of the lungs." []
is_a: T:1 ! Disease
"""
MEDQA = {"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "Vitamin A", "B": "Vitamin B12",
         "C": "Vitamin C", "D": "Vitamin D"}, "answer": "Vitamin C", "answer_idx": "C"}
MEDMCQA = {"id": "m1", "question": "Drug of choice for absence seizures:", "opa": "Phenytoin", "opb": "Ethosuximide",
           "opc": "Carbamazepine", "opd": "Phenobarbital", "cop": 2, "exp": None}


def cfg(tmp_path, sources, **kw):
    return build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "val_fraction": 0, "sources": sources, **kw})


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def rejected(out):
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def test_dangling_is_a_stops_with_file_and_line(tmp_path):
    obo = tmp_path / "t.obo"
    obo.write_text(OBO)
    with pytest.raises(UserError) as err:
        run(cfg(tmp_path, [{"name": "kg", "format": "kg", "ontology": str(obo)}]))
    assert err.value.path == str(obo) and err.value.line == OBO.splitlines().index("is_a: T:99 ! gone") + 1
    assert "term T:3: is_a T:99 is not a term of this file" in str(err.value)


def test_dangling_is_a_skipped_keeps_the_term(tmp_path):
    obo = tmp_path / "t.obo"
    obo.write_text(OBO)
    out = run(cfg(tmp_path, [{"name": "kg", "format": "kg", "ontology": str(obo), "tasks": ["relation"]}],
                  on_error="skip"))
    (row,) = rejected(out)
    assert (row["source"], row["path"], row["record"]) == ("kg", str(obo), {"id": "T:3", "is_a": "T:99"})
    answers = [json.loads(line)["messages"][-1]["content"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert "Arrhythmia is a kind of heart disease." in answers and len(answers) == 3  # the T:99 link left out
    assert json.loads((out / "stats.json").read_text())["counts"]["rejected"] == 1


@pytest.mark.parametrize("declared, name, rows, found", [
    ("alpaca", "q.jsonl", [MEDQA], "medqa"),
    ("medqa", "m.jsonl", [MEDMCQA], "medmcqa"),
    ("medmcqa", "a.jsonl", [{"instruction": "Q?", "input": "", "output": "A."}], "alpaca"),
    ("messages", "s.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}],
     "sharegpt"),
    ("qa_jsonl", "q.jsonl", [MEDQA], "medqa"),  # would convert without error, but drop the options
    ("alpaca", "c.jsonl", [{"question": "What is gout?", "answer": "Arthritis."}], "qa_jsonl"),
])
def test_wrong_format_is_named(tmp_path, declared, name, rows, found):
    path = jsonl(tmp_path / name, rows)
    for policy in ("stop", "skip"):  # a whole file in the wrong format is not a record to skip
        with pytest.raises(UserError, match=f"declares format: {declared}, but the file looks like {found}"
                                             f".*set format: {found}") as err:
            run(cfg(tmp_path, [{"name": "x", "format": declared, "paths": [path]}], on_error=policy))
        assert err.value.path == path and err.value.line == 1


def test_wrong_csv_for_mmlu(tmp_path):
    path = tmp_path / "mts.csv"
    path.write_text('ID,section_header,section_text,dialogue\n1,CC,Cough.,"Doctor: Hi"\n')
    with pytest.raises(UserError, match="looks like mtsdialog"):
        run(cfg(tmp_path, [{"name": "x", "format": "mmlu", "paths": [str(path)]}]))


@pytest.mark.parametrize("fmt, rows, reason", [
    ("medqa", [MEDQA, {**MEDQA, "answer_idx": "E"}], "answer_idx 'E' is not one of the options A, B, C, D"),
    ("medqa", [MEDQA, {**MEDQA, "question": ""}], "empty 'question'"),
    ("medmcqa", [MEDMCQA, {**MEDMCQA, "cop": 7}], "cop 7 is not an option number 1-4"),
    ("medmcqa", [MEDMCQA, {**MEDMCQA, "question": " "}], "empty 'question'"),
    ("qa_jsonl", [{"question": "Why?", "answer": "So."}, {"question": "", "answer": "x"}], "empty 'question'"),
])
def test_bad_items_stop_or_skip(tmp_path, fmt, rows, reason):
    path = jsonl(tmp_path / "f.jsonl", rows)
    with pytest.raises(UserError, match=f"f.jsonl:2: {reason}"):
        run(cfg(tmp_path, [{"name": "x", "format": fmt, "paths": [path]}]))
    out = run(cfg(tmp_path, [{"name": "x", "format": fmt, "paths": [path]}], on_error="skip"))
    (row,) = rejected(out)
    assert (row["line"], row["reason"], row["record"]) == (2, reason, rows[1])
    assert json.loads((out / "manifest.json").read_text())["counts"]["train"] == 1


def test_pubmedqa_empty_question_and_bad_label(tmp_path):
    data = {"1": {"QUESTION": "Q?", "CONTEXTS": ["c"], "final_decision": "yes"},
            "2": {"QUESTION": "", "CONTEXTS": ["c"], "final_decision": "no"},
            "3": {"QUESTION": "R?", "CONTEXTS": ["c"], "final_decision": "perhaps"}}
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(data, indent=1))
    with pytest.raises(UserError, match=r"ori_pqal.json:\d+: pmid 2: empty 'QUESTION'"):
        run(cfg(tmp_path, [{"name": "p", "format": "pubmedqa", "paths": [str(path)]}]))
    out = run(cfg(tmp_path, [{"name": "p", "format": "pubmedqa", "paths": [str(path)]}], on_error="skip"))
    assert [r["reason"] for r in rejected(out)] == [
        "pmid 2: empty 'QUESTION'", "pmid 3: final_decision 'perhaps' is not one of yes, no, maybe"]
