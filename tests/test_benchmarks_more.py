"""MedMCQA, MMLU and generic MCQ loaders; McNemar, paired bootstrap, calibration (benchmarks.stats)."""
from __future__ import annotations

import json
import math

import pytest

from pmcllama.benchmarks import load_benchmark, mcq, medmcqa, mmlu
from pmcllama.benchmarks.stats import (
    by_subject, calibration, choice_probs, mcnemar_exact, pair_records, paired_bootstrap_ci,
    paired_comparison, record_calibration,
)
from pmcllama.errors import UserError


def medmcqa_row(i, cop, subject="Anatomy", **extra):
    return {"id": f"q{i}", "question": f"Which nerve {i}?", "opa": "Facial", "opb": "Vagus",
            "opc": "Optic", "opd": "Trigeminal", "cop": cop, "choice_type": "single",
            "exp": None, "subject_name": subject, "topic_name": None, **extra}


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- MedMCQA

def test_medmcqa_prompt_gold_subjects(tmp_path):
    path = write_lines(tmp_path / "dev.json", [medmcqa_row(1, 1), medmcqa_row(2, 4, "Physiology"),
                                               medmcqa_row(3, 2, None)])
    b = load_benchmark("medmcqa", path)
    assert b.items[0].prompt == ("Question: Which nerve 1?\nChoices:\nA. Facial\nB. Vagus\nC. Optic\n"
                                 "D. Trigeminal\nAnswer:")
    assert b.items[0].choices == [" A", " B", " C", " D"]
    assert [it.gold for it in b.items] == [0, 3, 1]
    assert [it.subject for it in b.items] == ["Anatomy", "Physiology", None]
    assert b.template == "medmcqa-lmeval-v1" and b.labels == ["A", "B", "C", "D"]
    assert any("4,183" in w and "has 3" in w for w in b.warnings)  # dev.json of the wrong size


def test_medmcqa_cop_base_detection(tmp_path):
    zero = medmcqa.load(write_lines(tmp_path / "z.jsonl", [medmcqa_row(1, 0), medmcqa_row(2, 3)]))
    assert [it.gold for it in zero.items] == [0, 3] and "0-based" in zero.warnings[0]
    amb = medmcqa.load(write_lines(tmp_path / "a.jsonl", [medmcqa_row(1, 1), medmcqa_row(2, 3)]))
    assert [it.gold for it in amb.items] == [0, 2] and "cannot tell" in amb.warnings[0]
    array = tmp_path / "arr.json"
    array.write_text(json.dumps([medmcqa_row(1, 4), medmcqa_row(2, 1)], indent=1))
    arr = medmcqa.load(array)
    assert [it.gold for it in arr.items] == [3, 0] and not arr.warnings
    array.write_text(json.dumps([medmcqa_row(1, 4), medmcqa_row(2, 1), medmcqa_row(1, 2)], indent=1))
    with pytest.raises(UserError, match="duplicate id 'q1'") as e:
        medmcqa.load(array)
    assert e.value.line == array.read_text().count("\n", 0, array.read_text().rindex('"q1"')) + 1


@pytest.mark.parametrize("rows, message, line", [
    ([medmcqa_row(1, 1), medmcqa_row(2, 5)], "cop 5 is not an option number", 2),
    ([medmcqa_row(1, 0), medmcqa_row(2, 4)], "mixes 0-based", 2),
    ([medmcqa_row(1, 1), medmcqa_row(1, 2)], "duplicate id 'q1' \\(first on line 1\\)", 2),
    ([medmcqa_row(1, 1), {k: v for k, v in medmcqa_row(2, 1).items() if k != "cop"}], "test split", 2),
    (["", medmcqa_row(1, True)], "cop True", 2),
    ([medmcqa_row(1, 1), "{oops"], "not valid JSON", 2),
])
def test_medmcqa_errors_name_file_and_line(tmp_path, rows, message, line):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=message) as e:
        medmcqa.load(path)
    assert e.value.path == str(path) and e.value.line == line


# ---------------------------------------------------------------- MMLU

CSV = ('What is X?  ,one,two,three,four,B\n'
       '"A ""quoted"" question, with comma",a,b,"multi\nline",d,D\n'
       'Third?,p,q,r,s,A\n')


def test_mmlu_prompt_subject_and_gold(tmp_path):
    path = tmp_path / "clinical_knowledge_test.csv"
    path.write_text(CSV, encoding="utf-8")
    b = load_benchmark("mmlu", path)
    assert b.items[0].prompt == ("The following are multiple choice questions (with answers) about clinical "
                                 "knowledge.\n\nWhat is X?\nA. one\nB. two\nC. three\nD. four\nAnswer:")
    assert b.items[1].prompt.endswith('\n\nA "quoted" question, with comma\nA. a\nB. b\nC. multi\nline\nD. d\nAnswer:')
    assert [it.gold for it in b.items] == [1, 3, 0]
    assert [it.id for it in b.items] == ["clinical_knowledge-1", "clinical_knowledge-2", "clinical_knowledge-3"]
    assert {it.subject for it in b.items} == {"clinical_knowledge"}
    assert b.template == "mmlu-lmeval-v1" and any("265" in w for w in b.warnings)


def test_mmlu_subject_from_names_and_folder(tmp_path):
    assert mmlu.subject_of(tmp_path / "anatomy_test.csv") == ("anatomy", None)
    assert mmlu.subject_of(tmp_path / "mmlu_anatomy_test_sample.csv")[0] == "anatomy"
    assert mmlu.subject_of(tmp_path / "high_school_biology_dev.csv")[0] == "high_school_biology"
    guess, warning = mmlu.subject_of(tmp_path / "dentistry_test.csv")
    assert guess == "dentistry" and "not one of MMLU's 57" in warning
    folder = tmp_path / "med"
    folder.mkdir()
    (folder / "anatomy_test.csv").write_text("Q1?,a,b,c,d,A\n")
    (folder / "virology_test.csv").write_text("Q2?,a,b,c,d,C\nQ3?,a,b,c,d,D\n")
    b = mmlu.load(folder)
    assert [(it.id, it.subject, it.gold) for it in b.items] == [
        ("anatomy-1", "anatomy", 0), ("virology-1", "virology", 2), ("virology-2", "virology", 3)]
    assert "about virology.\n\nQ2?" in b.items[1].prompt
    one = mmlu.load(folder / "virology_test.csv", subject="medical_genetics")
    assert one.items[0].prompt.startswith("The following are multiple choice questions (with answers) "
                                          "about medical genetics.\n\nQ2?")


@pytest.mark.parametrize("text, message, line", [
    ("Q?,a,b,c,d,A\nQ?,a,b,c,A\n", "5 columns", 2),
    ('Q?,a,b,c,d,A\n"multi\nline",a,b,c,d,E\n', "answer 'E'", 2),
    ("Q?,a,b,c,d,A\n\nQ?,a,b,c,d,A,extra\n", "7 columns", 3),
])
def test_mmlu_errors_name_file_and_line(tmp_path, text, message, line):
    path = tmp_path / "anatomy_test.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        mmlu.load(path)
    assert e.value.path == str(path) and e.value.line == line


def test_mmlu_header_row_skipped_with_warning(tmp_path):
    path = tmp_path / "anatomy_x.csv"
    path.write_text("question,A,B,C,D,answer\nQ?,a,b,c,d,B\n")
    b = mmlu.load(path)
    assert len(b.items) == 1 and b.items[0].gold == 1 and "header" in b.warnings[0]


# ---------------------------------------------------------------- generic MCQ

def test_mcq_answers_as_index_letter_or_text(tmp_path):
    path = write_lines(tmp_path / "set.jsonl", [
        {"question": "Q1?", "options": ["Alpha", "Beta", "Gamma"], "answer": 2},
        {"id": "x", "question": "Q2?", "options": {"B": "Two", "A": "One"}, "answer": "B", "subject": "s"},
        {"question": "Q3?", "options": ["Alpha", "Beta"], "answer": "Beta"},
    ])
    b = load_benchmark("mcq", path)
    assert b.items[0].prompt == "Question: Q1?\nA. Alpha\nB. Beta\nC. Gamma\nAnswer:"
    assert b.items[1].prompt == "Question: Q2?\nA. One\nB. Two\nAnswer:"
    assert [it.gold for it in b.items] == [2, 1, 1]
    assert [it.id for it in b.items] == ["line-1", "x", "line-3"]
    assert [it.subject for it in b.items] == [None, "s", None]
    assert b.items[0].choices == [" A", " B", " C"] and b.labels == ["A", "B", "C"]
    cloze = load_benchmark("mcq", path, choices="text")
    assert cloze.items[0].prompt == "Question: Q1?\nAnswer:" and cloze.items[0].choices == [" Alpha", " Beta", " Gamma"]
    assert cloze.template == "mcq-text-cloze-v1"


@pytest.mark.parametrize("row, message", [
    ({"question": "Q?", "options": ["a", "b"], "answer": 2}, "outside 0..1"),
    ({"question": "Q?", "options": ["a", "b"], "answer": "zeta"}, "neither an option index"),
    ({"question": "Q?", "options": ["a", "b"], "answer": True}, "neither"),
    ({"question": "Q?", "options": {"A": "a", "C": "c"}, "answer": "A"}, "not A, B, C"),
    ({"question": "Q?", "options": ["a"], "answer": 0}, "2 to 26"),
    ({"question": "Q?", "options": ["a", "b"]}, "missing field 'answer'"),
    ({"id": 7, "question": "Q?", "options": ["a", "b"], "answer": 0}, "duplicate id '7'"),
])
def test_mcq_errors(tmp_path, row, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"id": 7, "question": "ok", "options": ["a", "b"], "answer": 0}, row])
    with pytest.raises(UserError, match=message) as e:
        mcq.load(path)
    assert e.value.line == 2 and e.value.path == str(path)


def test_format_option_checks(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [medmcqa_row(1, 1)])
    with pytest.raises(UserError, match="mcq or medqa only"):
        load_benchmark("medmcqa", path, choices="text")
    with pytest.raises(UserError, match="mmlu only"):
        load_benchmark("medmcqa", path, subject="anatomy")


@pytest.mark.shared
def test_shared_format_samples(shared_data):
    root = shared_data / "benchmarks" / "format_samples"
    med = load_benchmark("medmcqa", root / "medmcqa_dev_sample.jsonl")
    assert len(med.items) == 10 and len({it.id for it in med.items}) == 10
    assert all(it.prompt.startswith("Question: ") and "\nChoices:\nA. " in it.prompt for it in med.items)
    assert med.items[0].gold == 0  # "not true for myelinated fibres": opa, cop 1 (1-based)
    mm = load_benchmark("mmlu", root / "mmlu_anatomy_test_sample.csv")
    assert len(mm.items) == 10 and {it.subject for it in mm.items} == {"anatomy"}
    assert [it.gold for it in mm.items] == [0, 1, 0, 2, 1, 1, 0, 1, 2, 3]
    assert mm.items[0].prompt.startswith("The following are multiple choice questions (with answers) "
                                         "about anatomy.\n\nA lesion causing compression")


# ---------------------------------------------------------------- statistics

def test_mcnemar_exact_hand_computed():
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)  # 0.21875
    assert mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert 0 < mcnemar_exact(1000, 1200) < 1e-4  # large n stays exact (big integers)


def test_paired_bootstrap_and_comparison():
    a = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0] * 3
    b = [1, 1, 1, 1, 0, 1, 1, 0, 1, 1] * 3
    ci = paired_bootstrap_ci(a, b, n_boot=500, seed=3)
    assert ci == paired_bootstrap_ci(a, b, n_boot=500, seed=3)
    observed = (sum(b) - sum(a)) / len(a)
    assert ci[0] <= observed <= ci[1] and observed == pytest.approx(0.3)
    first = [{"id": f"i{k}", "correct": x} for k, x in enumerate(a)]
    second = [{"id": f"i{k}", "correct": x} for k, x in reversed(list(enumerate(b)))]  # order differs
    cmp = paired_comparison(first, second, n_boot=500, seed=3)
    assert cmp["n"] == 30 and cmp["diff"] == pytest.approx(0.3)
    assert (cmp["only_first_correct"], cmp["only_second_correct"]) == (0, 9)
    assert cmp["mcnemar_p"] == pytest.approx(2 / 2 ** 9)
    with pytest.raises(UserError, match="different items"):
        pair_records(first, second[:-1])


def test_calibration_perfect_and_overconfident():
    perfect = calibration([0.8] * 10 + [0.35] * 20, [1] * 8 + [0] * 2 + [1] * 7 + [0] * 13)
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["bins"][7]["n"] == 10 and perfect["bins"][3]["n"] == 20
    over = calibration([0.9] * 10, [1] * 5 + [0] * 5)
    assert over["ece"] == pytest.approx(0.4) and over["mean_confidence"] == pytest.approx(0.9)
    edges = calibration([0.0, 0.1, 1.0], [0, 0, 1])
    assert [b["n"] for b in edges["bins"]][0] == 2 and edges["bins"][9]["n"] == 1
    assert choice_probs([math.log(0.8), math.log(0.2)]) == pytest.approx([0.8, 0.2])
    recs = [{"loglik": [math.log(0.8), math.log(0.2)], "pred": 0, "correct": k < 8} for k in range(10)]
    assert record_calibration(recs)["ece"] == pytest.approx(0.0, abs=1e-9)


def test_by_subject():
    recs = [{"correct": c, "correct_norm": not c} for c in (True, False, True)]
    assert by_subject(recs, [None, None, None]) is None
    got = by_subject(recs, ["a", "b", None])
    assert got == {"(no subject)": {"n": 1, "acc": 1.0, "acc_norm": 0.0},
                   "a": {"n": 1, "acc": 1.0, "acc_norm": 0.0}, "b": {"n": 1, "acc": 0.0, "acc_norm": 1.0}}
