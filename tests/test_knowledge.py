"""Knowledge-graph prompts and the knowledge probe, on a tiny OBO file and on the real HPO."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from pmcllama.config import build_config
from pmcllama.instructions import InstructionsConfig, run
from pmcllama.knowledge import prompts as P
from pmcllama.knowledge.graph import lower_first
from pmcllama.knowledge.ontology import load_ontology, term_document

OBO = """format-version: 1.2
ontology: tiny

[Term]
id: T:0000001
name: Disease
def: "A disorder of structure or function." []

[Term]
id: T:0000002
name: Heart disease
def: "A disease of the heart." []
synonym: "Cardiopathy" EXACT []
is_a: T:0000001 ! Disease

[Term]
id: T:0000003
name: Lung disease
def: "A disease of the lungs" []
is_a: T:0000001 ! Disease

[Term]
id: T:0000004
name: Arrhythmia
def: "An abnormal heart rhythm." []
synonym: "Dysrhythmia" EXACT []
synonym: "Irregular heartbeat" EXACT []
synonym: "Heart rhythm thing" RELATED []
is_a: T:0000002 ! Heart disease

[Term]
id: T:0000005
name: Cardiomyopathy
def: "A disease of the heart muscle." []
is_a: T:0000002 ! Heart disease

[Term]
id: T:0000006
name: Asthma
def: "A chronic inflammatory disease of the airways." []
is_a: T:0000003 ! Lung disease

[Term]
id: T:0000007
name: Pneumonia
def: "Inflammation of the lung parenchyma." []
is_a: T:0000003 ! Lung disease

[Term]
id: T:0000008
name: Bradycardia
is_a: T:0000004 ! Arrhythmia
"""


@pytest.fixture
def tiny_obo(tmp_path):
    path = tmp_path / "tiny.obo"
    path.write_text(OBO, encoding="utf-8")
    return path


@pytest.fixture
def onto(tiny_obo):
    return load_ontology(tiny_obo)


def test_lower_first():
    assert lower_first("Heart block") == "heart block"
    assert lower_first("ALCAPA") == "ALCAPA"
    assert lower_first("QRS abnormality") == "QRS abnormality"
    assert lower_first("Bland-Garland-White syndrome") == "Bland-Garland-White syndrome"
    assert lower_first("pH") == "pH"
    assert lower_first("A") == "A"


def test_term_document_uses_helper(onto):
    doc = term_document(onto, onto.terms["T:0000004"])
    assert "Arrhythmia is a kind of heart disease." in doc
    assert "this is called arrhythmia." in doc


def test_description_text(onto):
    term = onto.terms["T:0000004"]
    p = P.description(onto, term, random.Random(0))
    assert p.answer == "An abnormal heart rhythm. It is also known as Dysrhythmia, Irregular heartbeat."
    expected = {"What is arrhythmia?", "Define arrhythmia.", "What does the term arrhythmia mean?"}
    assert p.question in expected
    seen = {P.description(onto, term, random.Random(s)).question for s in range(40)}
    assert seen == expected  # every paraphrase is used
    p = P.description(onto, onto.terms["T:0000003"], random.Random(0))
    assert p.answer == "A disease of the lungs."  # a full stop is added, no synonyms sentence


def test_relation_text(onto):
    term = onto.terms["T:0000004"]
    (p,) = P.relations(onto, term, random.Random(0))
    assert p.answer == "Arrhythmia is a kind of heart disease."
    assert p.question in {t.format(a="arrhythmia", b="heart disease") for t in P.TEMPLATES["relation"]}
    assert P.TEMPLATES["relation"][0].format(a="arrhythmia", b="heart disease") == \
        "What is the relation between arrhythmia and heart disease?"
    with pytest.raises(P.Skip, match="no relation"):
        P.relations(onto, onto.terms["T:0000001"], random.Random(0))


def _check_mcq(p, correct):
    assert sorted(p.options) == list("ABCD")
    values = list(p.options.values())
    assert values.count(correct) == 1 and p.options[p.answer_idx] == correct
    assert len({v.lower() for v in values}) == 4
    assert p.answer == f"The answer is {p.answer_idx}. {correct}"
    assert p.user_text().endswith("\n".join(f"{k}. {v}" for k, v in p.options.items()))


def test_mcq_definition(onto):
    terms = onto.select()
    term = onto.terms["T:0000004"]
    for seed in range(20):
        p = P.mcq_definition(onto, term, random.Random(seed), terms, seed % 4)
        _check_mcq(p, "Arrhythmia")
        assert p.answer_idx == "ABCD"[seed % 4]
        assert "An abnormal heart rhythm." in p.question
        # the sibling comes first among the distractors
        assert "Cardiomyopathy" in p.options.values()


def test_mcq_parent_distractors_are_not_ancestors(onto):
    terms = onto.select()
    for term in onto.terms.values():
        if not term.parents:
            continue
        anc_names = {onto.terms[a].name for a in P.ancestors(onto, term.id)}
        parent = onto.terms[term.parents[0]].name
        for seed in range(10):
            p = P.mcq_parent(onto, term, random.Random(seed), terms, P.LetterDeck(random.Random(seed)))
            _check_mcq(p, parent)
            distractors = [v for k, v in p.options.items() if k != p.answer_idx]
            assert not set(distractors) & anc_names
            assert term.name not in distractors


def test_kg_prompts_deterministic_and_skips(onto):
    terms = list(onto.terms.values())  # includes Bradycardia (no definition) and Disease (no parent)
    a, skipped = P.kg_prompts(onto, terms, seed=1)
    b, _ = P.kg_prompts(onto, terms, seed=1)
    c, _ = P.kg_prompts(onto, terms, seed=2)
    assert a == b and a != c
    assert skipped == Counter({"description: no definition": 1, "mcq_definition: no definition": 1,
                               "relation: no relation": 1, "mcq_parent: no parent": 1})
    tasks = Counter(p.task for p in a)
    assert tasks == {"description": 7, "relation": 7, "mcq_definition": 7, "mcq_parent": 7}


def test_kg_prompts_exclude_held_out_terms(onto):
    terms = onto.select()
    held = {"T:0000005"}
    prompts, _ = P.kg_prompts(onto, [t for t in terms if t.id not in held], pool=terms, exclude=held)
    for p in prompts:
        assert "Cardiomyopathy" not in p.user_text() and "cardiomyopathy" not in p.user_text()


def test_probe_rows(onto):
    terms = onto.select()
    rows, skipped = P.probe_rows(onto, terms, terms, seed=0)
    assert len(rows) == 2 * len(terms) - sum(skipped.values())
    for row in rows:
        assert set(row) == {"question", "options", "answer", "answer_idx", "meta_info", "id"}
        assert row["options"][row["answer_idx"]] == row["answer"]
        assert list(row["options"].values()).count(row["answer"]) == 1
        assert row["meta_info"] in ("probe-definition", "probe-parent")
        assert row["id"].endswith(row["meta_info"].split("-")[1])


def test_hpo_probe_and_counts(tmp_path):
    onto = load_ontology("hpo")
    selected = onto.select("HP:0001626", 60, 0)
    cfg = build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "sources": [
        {"name": "hpo", "format": "kg", "root": "HP:0001626", "limit": 60, "probe_terms": 20}]})
    out = run(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    counts = manifest["counts"]
    assert manifest["files"] == {"train": "train.jsonl", "val": "val.jsonl", "probe": "probe.jsonl",
                                 "alpaca": "alpaca.json"}
    src = stats["sources"]["hpo"]
    assert counts["train"] + counts["val"] + counts["duplicates"] == src["records"]
    assert counts["val"] >= 1 and counts["rejected"] == 0
    assert counts["probe"] == 40 - sum(v for k, v in src["skipped"].items() if k.startswith("probe"))
    assert counts["probe"] >= 30
    assert sum(src["tasks"].values()) == src["records"]
    assert sum(n for k, n in src["skipped"].items() if not k.startswith("probe")) + src["records"] >= 3 * 40

    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert len(probe) == counts["probe"] == sum(stats["probe"].values())
    held = {t.id: t for t in selected[:20]}
    assert {r["id"].rsplit("-", 1)[0] for r in probe} <= set(held)
    letters = Counter(r["answer_idx"] for r in probe)
    assert set(letters) == set("ABCD") and max(letters.values()) - min(letters.values()) <= 2

    records = [json.loads(line) for name in ("train.jsonl", "val.jsonl")
               for line in (out / name).read_text().splitlines()]
    held_names = {t.name.lower() for t in held.values()}
    for r in records:
        term_id = r["id"][len("hpo-"):].rsplit("-", 1)[0].rsplit("-", 1)[0]
        assert term_id not in held
        user = r["messages"][-2]["content"].lower()
        answer = r["messages"][-1]["content"].lower()
        if r["task"] in ("description", "mcq_definition"):
            assert not any(n in user for n in held_names)
        if r["task"] == "relation":
            assert not any(answer.startswith(n + " is a kind of") for n in held_names)
        if r["task"] == "mcq_parent":  # the question stem names the subject only
            assert not any(n in user.split("\n")[0] for n in held_names)
        assert any(m["role"] == "assistant" for m in r["messages"])


def test_sentence_helpers():
    from pmcllama.knowledge.obo import Term
    from pmcllama.knowledge.graph import clean_synonyms, plain, upper_first

    assert upper_first("urofacial syndrome") == "Urofacial syndrome"
    assert [upper_first(x) for x in ("mRNA decay", "pH", "ALCAPA", "Asthma")] == ["mRNA decay", "pH", "ALCAPA", "Asthma"]
    assert plain("A cancer that has_material_basis_in epithelial cells and is located_in the liver.") == \
        "A cancer that has its material basis in epithelial cells and is located in the liver."
    assert plain("An infection that results_in_formation_of cysts and has_symptom fever.") == \
        "An infection that results in formation of cysts and has the symptom fever."
    assert upper_first("non-syndromic deafness") == "Non-syndromic deafness"
    t = Term(id="X:1", name="choroid plexus carcinoma", synonyms=[
        "Choroid plexus carcinoma (morphologic abnormality)", "malignant tumor of choroid plexus (disorder)",
        "Malignant tumor of choroid plexus", "cancer of choroid plexus (disorder) [Ambiguous]",
        "choroid plexus carcinoma NOS", "a", "b", "c"])
    assert clean_synonyms(t) == ["malignant tumor of choroid plexus", "cancer of choroid plexus", "a", "b"]


def test_lower_case_names_start_sentences_with_a_capital(tmp_path):
    path = tmp_path / "d.obo"
    path.write_text(OBO.replace("name: Arrhythmia", "name: arrhythmia").replace(
        '"An abnormal heart rhythm."', '"A heart disease that has_material_basis_in an abnormal rhythm."'))
    onto = load_ontology(path)
    term = onto.terms["T:0000004"]
    (r,) = P.relations(onto, term, random.Random(0))
    assert r.answer == "Arrhythmia is a kind of heart disease."
    assert P.description(onto, term, random.Random(0)).answer.startswith(
        "A heart disease that has its material basis in an abnormal rhythm.")
    questions = {P.mcq_parent(onto, term, random.Random(s), onto.select(), 0).question for s in range(30)}
    assert "Arrhythmia is a kind of which of the following?" in questions


@pytest.mark.shared
def test_doid_prompts_read_well(shared_data):
    path = shared_data / "knowledge" / "doid.obo"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    onto = load_ontology(path)
    terms = onto.select(None, 300, 0)
    prompts, skipped = P.kg_prompts(onto, terms, seed=0, pool=onto.select())
    assert len(prompts) >= 4 * 300 - sum(skipped.values())
    for p in prompts:
        assert p.answer[0].isupper() or not p.answer[0].isalpha(), p.answer
        assert "_" not in p.answer and "(disorder)" not in p.answer, p.answer
        first_line = p.user_text().split("\n")[0]
        assert first_line[0].isupper() or not first_line[0].isalpha(), first_line
