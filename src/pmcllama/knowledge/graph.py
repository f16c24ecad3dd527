"""The in-memory knowledge graph every knowledge source is read into (`Ontology` of `Term`s):
terms, hierarchy, relations, and the small interface the KG prompt generator
(`knowledge.prompts`) reads. The layer below the sources (`knowledge.ontology`, `.hpo`,
`.icd10`, `.umls`), which build it.

The interface the generator uses: `mention` (the name inside a sentence), `usable` (may the
term be asked about), `describe` (the answer to "What is <term>?"), `clue` (what an MCQ stem
shows to name the term), `parents`, `edges` (relations worded in English), `near` (terms close
in the hierarchy, for distractors), `ancestors`, and `templates` (per-task question templates
that replace the defaults). A source with its own wording (ICD-10) subclasses `Ontology` and
overrides these. The corpus stage also uses `select`.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from pmcllama.errors import UserError
from pmcllama.knowledge.obo import Term

# Relation ids (OBO relationship types, UMLS RELA) whose words do not read as English as they are.
RELATION_PHRASES = {
    "isa": "is a kind of", "is_a": "is a kind of", "narrower_than": "is a narrower concept than",
    "part_of": "is part of", "has_part": "has as a part", "has_symptom": "has the symptom",
    "has_phenotype": "has the clinical feature", "phenotype_of": "is a clinical feature of",
    "ingredient_of": "is an ingredient of", "has_ingredient": "has the ingredient",
    "manifestation_of": "is a manifestation of", "has_manifestation": "has the manifestation",
    "has_finding_site": "has its finding site in", "finding_site_of": "is the finding site of",
    "has_causative_agent": "is caused by", "causative_agent_of": "is the causative agent of",
    "has_associated_morphology": "has the associated morphology",
    "associated_morphology_of": "is the associated morphology of",
    "has_location": "is located in", "location_of": "is the location of",
    "has_active_ingredient": "has the active ingredient", "active_ingredient_of": "is the active ingredient of",
    "has_mechanism_of_action": "has the mechanism of action",
    "mechanism_of_action_of": "is the mechanism of action of",
}
_PREPOSITIONS = ("of", "with", "by", "to", "in", "from", "for", "on", "as")
_VERBS = ("has", "have", "may", "is", "are", "can", "was", "does", "contains", "causes", "treats",
          "prevents", "induces", "regulates", "occurs", "uses", "measures", "affects", "includes")


def relation_phrase(rel: str) -> str:
    """A relation id in English: "may_treat" -> "may treat", "associated_with" -> "is associated
    with", "part_of" -> "is part of", "results_in" -> "results in"."""
    key = rel.strip().lower()
    if key in RELATION_PHRASES:
        return RELATION_PHRASES[key]
    words = key.replace("_", " ").replace("-", " ").split()
    if not words:
        return "is related to"
    first = words[0]
    verb = first in _VERBS or (first.endswith("s") and not first.endswith("ss") and not first.endswith("ed"))
    if len(words) > 1 and words[-1] in _PREPOSITIONS and not verb:
        words.insert(0, "is")
    return " ".join(words)


_RELATION_ID = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")
_SNOMED_TAG = re.compile(r"\s*\((?:disorder|finding|morphologic abnormality|body structure|procedure|situation|"
                         r"qualifier value|substance|organism|navigational concept|observable entity)\)$")


_IN_DEFINITIONS = {"has_material_basis_in": "has its material basis in", "has_symptom": "has the symptom"}


def plain(text: str) -> str:
    """Relation ids that definitions use as verbs made words, as the Disease Ontology writes
    them: "that has_material_basis_in" -> "that has its material basis in", "is located_in"
    -> "is located in", "results_in_formation_of" -> "results in formation of"."""
    return _RELATION_ID.sub(lambda m: _IN_DEFINITIONS.get(m.group(0), m.group(0).replace("_", " ")), text)


_BRACKETS = re.compile(r"\s*\[[^\]]*\]$")
_NOS = re.compile(r",?\s+NOS$")


def clean_synonyms(term: "Term", n: int = 4) -> list[str]:
    """Up to `n` synonyms, without SNOMED CT tags ("... (disorder) [Ambiguous]"), without a
    coder's trailing "NOS", and without repeats of the name or of each other (case aside)."""
    out, seen = [], {term.name.lower()}
    for s in term.synonyms:
        s = _NOS.sub("", _SNOMED_TAG.sub("", _BRACKETS.sub("", s))).strip()
        if s and s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    return out[:n]


@dataclass
class Ontology:
    terms: dict[str, Term]
    children: dict[str, list[str]]
    source: str
    dangling: list[tuple[str, str, int]] = field(default_factory=list)  # (term id, missing parent, line)
    templates: dict[str, list[str]] = field(default_factory=dict)  # per-task question templates

    # ------------------------------------------------------------------ the generator's interface

    def mention(self, term: Term) -> str:
        """The term's name inside a sentence ("Heart block" -> "heart block")."""
        return lower_first(term.name)

    def usable(self, term: Term) -> bool:
        """May the term be selected for prompts (a name and a definition)?"""
        return bool(term.name and term.definition)

    def describe(self, term: Term) -> str | None:
        """The answer to "What is <term>?": the definition (+ synonyms); None when there is none."""
        if not term.definition:
            return None
        answer = sentence(plain(term.definition))
        synonyms = clean_synonyms(term)
        if synonyms:
            answer += f" It is also known as {', '.join(synonyms)}."
        return answer

    def clue(self, term: Term) -> str | None:
        """What a "which term is this?" MCQ stem shows (None: the term cannot be asked so)."""
        return sentence(plain(term.definition)) if term.definition else None

    def parents(self, term: Term) -> list[Term]:
        return [self.terms[p] for p in term.parents if p in self.terms and self.terms[p].name]

    def edges(self, term: Term) -> list[tuple[str, Term]]:
        """(answer template with {A}/{a} for the term and {b} for the other, other term): the
        is_a parents, then the other relations whose target is in the ontology."""
        out = [("{A} is a kind of {b}.", p) for p in self.parents(term)]
        for rel, target in term.relations:
            other = self.terms.get(target)
            if other is not None and other.name and other.id != term.id:
                out.append((f"{{A}} {relation_phrase(rel)} {{b}}.", other))
        return out

    def near(self, term: Term) -> list[list[Term]]:
        """Terms close to `term`, nearest first: [its siblings, its cousins] (each sorted by id)."""
        sibs = self.siblings(term)
        seen = {term.id, *(t.id for t in sibs), *term.parents}
        cousins = []
        for p in self.parents(term):
            for uncle in self.siblings(p):
                for c in self.children.get(uncle.id, []):
                    if c not in seen and c in self.terms:
                        seen.add(c)
                        cousins.append(self.terms[c])
        return [sibs, sorted(cousins, key=lambda t: t.id)]

    def ancestors(self, term_id: str) -> set[str]:
        seen: set[str] = set()
        frontier = [term_id]
        while frontier:
            node = self.terms.get(frontier.pop())
            for p in node.parents if node else []:
                if p not in seen:
                    seen.add(p)
                    frontier.append(p)
        return seen

    # ------------------------------------------------------------------ hierarchy and selection

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
        """A deterministic subset of usable terms: descendants of `root` (all terms if None),
        shuffled by seed (`require_definition=False`: every named term)."""
        ids = self.descendants(root) if root else list(self.terms)
        terms = [self.terms[i] for i in ids
                 if (self.usable(self.terms[i]) if require_definition else self.terms[i].name)]
        terms.sort(key=lambda t: t.id)
        random.Random(seed).shuffle(terms)
        return terms[:limit] if limit else terms

    def parent_names(self, term: Term) -> list[str]:
        return [p.name for p in self.parents(term)]

    def siblings(self, term: Term) -> list[Term]:
        """Terms sharing a parent with `term` (excluding itself), sorted by id."""
        ids = {c for p in term.parents for c in self.children.get(p, []) if c != term.id}
        return sorted((self.terms[i] for i in ids if i in self.terms), key=lambda t: t.id)


def link(terms: dict[str, Term]) -> tuple[dict[str, list[str]], list[tuple[str, str, int]]]:
    """(children by parent id, dangling is_a links) of a term table."""
    children: dict[str, list[str]] = {}
    dangling = []
    for t in terms.values():
        lines = t.parent_lines or [0] * len(t.parents)
        for p, line in zip(t.parents, lines):
            if p in terms:
                children.setdefault(p, []).append(t.id)
            else:
                dangling.append((t.id, p, line))
    return children, dangling


def sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def upper_first(name: str) -> str:
    """`name` to start a sentence: the first letter capitalised when the first word has no
    capital ("urofacial syndrome" -> "Urofacial syndrome"; "mRNA", "pH" stay as they are)."""
    first_word = name.split(" ", 1)[0]
    return name[0].upper() + name[1:] if name[:1].islower() and first_word.islower() else name


def lower_first(name: str) -> str:
    """`name` for use inside a sentence: the first letter lower-cased only when the rest of the
    first word is lower-case ("Heart block" -> "heart block"; "ALCAPA", "QRS", "Bland-Garland-White
    syndrome" stay as they are)."""
    first_word = name.split(" ", 1)[0]
    if len(first_word) < 2 or not first_word[1].islower() or any(c.isupper() for c in first_word[1:]):
        return name
    return name[0].lower() + name[1:]
