"""The built-in `hpo` source: HPO terms plus frequent disease annotations (phenotype.hpoa)."""
from __future__ import annotations

import random

import pytest

from pmcllama.errors import UserError
from pmcllama.knowledge import prompts as P
from pmcllama.knowledge.hpo import frequency, read_annotations
from pmcllama.knowledge.ontology import load_ontology

HPOA = """#description: "HPO annotations"
#version: 2025-01-16
database_id\tdisease_name\tqualifier\thpo_id\treference\tevidence\tonset\tfrequency\tsex\tmodifier\taspect\tbiocuration
OMIM:1\tMarfan syndrome\t\tHP:0001166\tPMID:1\tTAS\t\tHP:0040281\t\t\tP\tx
OMIM:2\tRare syndrome\t\tHP:0001166\tPMID:1\tPCS\t\t1/1\t\t\tP\tx
OMIM:3\tOther syndrome\tNOT\tHP:0001166\tPMID:1\tPCS\t\t5/5\t\t\tP\tx
ORPHA:4\tBig cohort disease\t\tHP:0001166\tPMID:1\tPCS\t\t9/10\t\t\tP\tx
ORPHA:5\tOccasional disease\t\tHP:0001166\tPMID:1\tPCS\t\tHP:0040283\t\t\tP\tx
ORPHA:6\tInheritance row\t\tHP:0000006\tPMID:1\tPCS\t\tHP:0040280\t\t\tI\tx
"""


@pytest.mark.parametrize("value, share", [
    ("HP:0040280", 1.0), ("HP:0040281", 0.9), ("HP:0040283", 0.17), ("4/5", 0.8), ("1/1", None), ("2/2", None),
    ("85%", 0.85), ("", None), ("often", None)])
def test_frequency(value, share):
    assert frequency(value) == share


def test_read_annotations_keeps_frequent_positive_phenotypes(tmp_path):
    path = tmp_path / "phenotype.hpoa"
    path.write_text(HPOA)
    names, by_phenotype = read_annotations(path)
    assert by_phenotype == {"HP:0001166": [(0.9, "OMIM:1"), (0.9, "ORPHA:4")]}
    assert names == {"OMIM:1": "Marfan syndrome", "ORPHA:4": "Big cohort disease"}
    path.write_text(HPOA + "OMIM:9\tBroken\tHP:1\n")
    with pytest.raises(UserError, match="phenotype.hpoa:10: 3 columns, the header has 12"):
        read_annotations(path)


def test_hpo_phenotype_of_relations():
    onto = load_ontology("hpo")
    term = onto.terms["HP:0001166"]  # Arachnodactyly
    diseases = [onto.terms[d] for r, d in term.relations if r == "phenotype_of"]
    assert 1 <= len(diseases) <= 2 and all(d.kind == "disease" and not d.definition for d in diseases)
    answers = [p.answer for p in P.relations(onto, term, random.Random(0))]
    assert f"Arachnodactyly is a clinical feature of {diseases[0].name}." in answers
    assert answers[0].startswith("Arachnodactyly is a kind of ")  # the hierarchy first
    selected = onto.select()
    assert all(t.kind != "disease" for t in selected) and len(selected) > 15000
