"""The benchmark-document layer: one `docs` per format serves evaluation, the instruction
converters and decontamination; prompts are rendered from documents in lm-eval's terms."""
from __future__ import annotations

import json

import pytest

from pmcllama.benchmarks import check_options, load_benchmark, medmcqa, medqa, mmlu, pubmedqa
from pmcllama.benchmarks.generation import option_texts
from pmcllama.benchmarks.prompting import build, cot_prompt, fewshot_prompt
from pmcllama.config import build_config
from pmcllama.data.decontam import build_index
from pmcllama.data.qa import read_items
from pmcllama.errors import ConfigError, UserError
from pmcllama.evaluate import EvaluateConfig

MQ = {"question": "Which drug?", "options": {"A": "Alpha", "B": "Beta", "C": "Gamma", "D": "Delta"},
      "answer_idx": "C"}
MM = {"id": "m1", "question": "Which nerve?", "opa": "ulnar", "opb": "radial", "opc": "median", "opd": "axillary",
      "cop": 2, "exp": " Because. ", "subject_name": "Anatomy"}


def lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_docs_and_lm_eval_functions_per_format(tmp_path):
    (doc,) = medqa.docs(lines(tmp_path / "q.jsonl", [MQ]))
    assert (doc.id, doc.line, doc.answer) == ("line-1", 1, "C")
    assert medqa.doc_to_text(doc) == "Question: Which drug?\nA. Alpha\nB. Beta\nC. Gamma\nD. Delta\nAnswer:"
    assert medqa.doc_to_choice(doc) == ["A", "B", "C", "D"] and medqa.doc_to_target(doc) == 2
    (doc,) = medmcqa.docs(lines(tmp_path / "m.jsonl", [MM]))
    assert medmcqa.doc_to_text(doc) == medmcqa.build_prompt("Which nerve?", ["ulnar", "radial", "median", "axillary"])
    assert medmcqa.doc_to_target(doc) == 1 and (doc.subject, doc.rationale) == ("Anatomy", " Because. ")
    pq = tmp_path / "ori_pqal.json"
    pq.write_text(json.dumps({"7": {"QUESTION": "Q?", "CONTEXTS": ["a", "b"], "final_decision": "maybe"}}))
    (doc,) = pubmedqa.docs(pq)
    assert pubmedqa.doc_to_text(doc) == "Abstract: a\nb\nQuestion: Q?\nAnswer:" and pubmedqa.doc_to_target(doc) == 2
    csv = tmp_path / "anatomy_test.csv"
    csv.write_text(" Q? ,a,b,c,d,D\n")
    (doc,) = mmlu.docs(csv)
    assert mmlu.TASK.description(doc) + mmlu.doc_to_text(doc) == mmlu.build_prompt("anatomy", " Q? ", list("abcd"))
    assert (doc.id, mmlu.doc_to_target(doc)) == ("line-1", 3)


def test_items_carry_their_document(tmp_path):
    item = load_benchmark("medqa", lines(tmp_path / "q.jsonl", [MQ])).items[0]
    assert item.doc.question == "Which drug?" and item.prompt == item.task.doc_to_text(item.doc)
    assert item.choices == [" A", " B", " C", " D"] and item.gold == 2


def test_lenient_docs_keep_errors_strict_docs_raise(tmp_path):
    path = lines(tmp_path / "q.jsonl", [MQ, {**MQ, "answer_idx": "Z"}])
    path.write_text(path.read_text() + "{oops\n")
    found = medqa.docs(path, strict=False)
    assert [(d.line, d.error and d.error[:14]) for d in found] == [
        (1, None), (2, "answer_idx 'Z'"), (3, "not valid JSON")]
    with pytest.raises(UserError, match="q.jsonl:2: answer_idx 'Z'"):
        medqa.docs(path)
    odd = lines(tmp_path / "odd.jsonl", [{**MQ, "answer_idx": ["A"]}])  # unhashable: still one line
    with pytest.raises(UserError, match=r"odd.jsonl:1: answer_idx \['A'\] is not one of the options"):
        load_benchmark("medqa", odd)


def test_fewshot_and_cot_are_rendered_from_documents(tmp_path):
    csv = tmp_path / "anatomy_test.csv"
    csv.write_text("Q1?,a,b,c,d,A\nQ2?,e,f,g,h,B\nQ3?,i,j,k,l,C\n")
    items = load_benchmark("mmlu", csv).items
    text = fewshot_prompt(items[2], items[:2])
    head = mmlu.header("anatomy")
    assert text == (head + "Q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\nQ2?\nA. e\nB. f\nC. g\nD. h\nAnswer: B"
                    "\n\nQ3?\nA. i\nB. j\nC. k\nD. l\nAnswer:")
    assert text.count(head) == 1
    cot = cot_prompt(items[0])
    assert cot.startswith(head + "Q1?\nA. a\n") and cot.endswith("one of A, B, C, D.\nReasoning:")
    assert build(items[:1], "cot")[0].prompt == cot


def test_a_question_that_quotes_the_header_is_not_cut(tmp_path):
    """A document's own text stays as it is: the description is rendered once, from the task."""
    head = mmlu.header("anatomy")
    csv = tmp_path / "anatomy_test.csv"
    csv.write_text(f'"{head}Q1?",a,b,c,d,A\nQ2?,e,f,g,h,B\n')
    items = load_benchmark("mmlu", csv).items
    text = fewshot_prompt(items[1], items[:1])
    assert text == head + items[0].task.doc_to_text(items[0].doc) + " A\n\n" + "Q2?\nA. e\nB. f\nC. g\nD. h\nAnswer:"


def test_converters_and_decontamination_read_the_same_documents(tmp_path):
    array = tmp_path / "dev.json"
    array.write_text(json.dumps([MM, {**MM, "id": "m2", "question": "one two three four five"}], indent=1))
    rows = list(read_items("medmcqa", array))
    text = array.read_text()
    line = [text.count("\n", 0, text.index(f'"{rid}"')) + 1 for rid in ("m1", "m2")]
    assert [(r.line, r.item, r.value.id, r.value.answer, r.value.rationale) for r in rows] == [
        (line[0], 0, "m1", "B", "Because."), (line[1], 1, "m2", "B", "Because.")]
    index = build_index([f"medmcqa:{array}"], n=4)
    assert index.find("x one two three four") == [("dev.json", "m2")]
    csv = tmp_path / "anatomy_x.csv"
    csv.write_text("question,A,B,C,D,answer\nQ?,a,b,c,d,B\n")  # a header row
    header, row = read_items("mmlu", csv)  # set aside by the converters (counted in rejected.jsonl)
    assert (header.line, header.error, row.value.answer) == (1, "a header row (official MMLU CSVs have none)", "B")
    loaded = load_benchmark("mmlu", csv)  # skipped by evaluation, with a warning
    assert [it.gold for it in loaded.items] == [1] and "header row" in loaded.warnings[0]


def test_medmcqa_converter_refuses_0_based_answers(tmp_path):
    path = lines(tmp_path / "m.jsonl", [{**MM, "cop": 0}, {**MM, "id": "m2", "cop": 3}])
    rows = list(read_items("medmcqa", path))
    assert "Hugging Face copy counts 0-3" in rows[0].error
    assert rows[1].value.answer == "D"  # the file is 0-based: cop 3 is D, as evaluation reads it
    assert [it.gold for it in load_benchmark("medmcqa", path).items] == [0, 3]


def test_format_options_checked_once(tmp_path):
    with pytest.raises(ValueError, match="ids applies to format pubmedqa only"):
        check_options("medqa", ids="x")
    with pytest.raises(UserError, match="ids applies to format pubmedqa only"):
        load_benchmark("medqa", tmp_path / "q.jsonl", ids="x")
    with pytest.raises(ConfigError, match="ids applies to format pubmedqa only"):
        build_config(EvaluateConfig, {"model": "tiny-llama", "benchmarks": [
            {"name": "q", "format": "medqa", "path": "q.jsonl", "ids": "x"}]})


def test_option_texts_come_from_the_document(tmp_path):
    csv = tmp_path / "anatomy_test.csv"
    csv.write_text('Q?,a,"two\nlines",c,d,B\n')
    item = load_benchmark("mmlu", csv).items[0]
    assert option_texts(item) == ["a", "two\nlines", "c", "d"]  # the prompt's lines would cut it
