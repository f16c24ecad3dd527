"""Knowledge-graph prompts: ontology terms -> question/answer pairs, and the knowledge probe.

Four tasks, each with a few paraphrased question templates:
- `description`:    "What is <term>?" -> the definition (+ synonyms),
- `relation`:       "What is the relation between <a> and <b>?" -> "<A> is a kind of <b>." (or
                    the ontology's other relations worded in English: "<A> may treat <b>."),
- `mcq_definition`: a definition, four term names A-D, answer "The answer is C. <term>",
- `mcq_parent`:     "<term> is a kind of which of the following?", the parent among three
                    terms that are not ancestors of the term.
Distractors come from the terms nearest in the hierarchy (siblings, then cousins), then from
terms of the same kind. The generator reads an ontology only through the small interface of
`pmcllama.knowledge.graph.Ontology` (`describe`, `clue`, `edges`, `near`, `templates`, ...),
so OBO files, HPO, ICD-10 and UMLS all feed it; a source may replace the templates (ICD-10
asks "What is the ICD-10 code for <term>?").

Everything random (template, distractors, answer letter) comes from `random.Random` objects
seeded from the caller's seed, so the same seed gives the same prompts. The knowledge probe
is the MCQ kinds over held-out terms, written in the MedQA-USMLE JSONL layout.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pmcllama.knowledge.obo import Term
from pmcllama.knowledge.graph import Ontology, upper_first

TASKS = ("description", "relation", "mcq_definition", "mcq_parent")
LETTERS = "ABCD"

TEMPLATES: dict[str, list[str]] = {
    "description": ["What is {term}?", "Define {term}.", "What does the term {term} mean?"],
    "relation": [
        "What is the relation between {a} and {b}?",
        "How is {a} related to {b}?",
        "What is the relationship between {a} and {b}?",
    ],
    "mcq_definition": [
        "Which term matches this definition? {definition}",
        "Which of the following terms is defined as follows? {definition}",
        "{definition} Which term does this describe?",
    ],
    "mcq_parent": [
        "{Term} is a kind of which of the following?",
        "Which of the following is {term} a type of?",
        "{Term} is a subtype of which of the following?",
    ],
}


class Skip(Exception):
    """A term lacks what a task needs; the message is the reason, counted by the caller."""


@dataclass
class KGPrompt:
    task: str
    term_id: str
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    answer_idx: str | None = None

    def user_text(self) -> str:
        """The question as shown to the model: the stem plus one `X. option` line per option."""
        if not self.options:
            return self.question
        return self.question + "\n" + "\n".join(f"{k}. {v}" for k, v in self.options.items())


class LetterDeck:
    """Answer positions dealt from shuffled decks of 0..3: every letter equally often (+-1)."""

    def __init__(self, rng: random.Random):
        self.rng, self.deck = rng, []

    def next(self) -> int:
        if not self.deck:
            self.deck = list(range(len(LETTERS)))
            self.rng.shuffle(self.deck)
        return self.deck.pop()


def term_rng(seed: int, task: str, term: Term) -> random.Random:
    """An RNG per (seed, task, term): a term's prompts do not depend on the other terms."""
    return random.Random(f"{seed}|{task}|{term.id}")


def ancestors(onto: Ontology, term_id: str) -> set[str]:
    return onto.ancestors(term_id)


def _template(onto: Ontology, task: str, rng: random.Random) -> str:
    return rng.choice(onto.templates.get(task) or TEMPLATES[task])


def _random_order(rng: random.Random, items: Sequence[Term]) -> Iterable[Term]:
    """`items` in a random order, lazily (large pools are not shuffled in full per prompt)."""
    if len(items) <= 64:
        order = list(items)
        rng.shuffle(order)
        yield from order
        return
    seen: set[int] = set()
    for _ in range(64):
        i = rng.randrange(len(items))
        if i not in seen:
            seen.add(i)
            yield items[i]
    rest = [t for i, t in enumerate(items) if i not in seen]
    rng.shuffle(rest)
    yield from rest


def pick_distractors(rng: random.Random, near: Sequence[Sequence[Term]], pool: Sequence[Term],
                     banned_ids: set[str], banned_names: set[str], kind: str = "", n: int = 3) -> list[str]:
    """`n` distinct names: from the `near` groups in turn (each shuffled), then from the terms of
    `pool` of the same `kind` (when given), then from all of `pool`; never a banned id or name."""
    names: list[str] = []
    taken = {x.lower() for x in banned_names}
    groups = [*near, [t for t in pool if t.kind == kind] if kind else [], pool]
    for group in groups:
        for t in _random_order(rng, group):
            if t.id in banned_ids or not t.name or t.name.lower() in taken:
                continue
            names.append(t.name)
            taken.add(t.name.lower())
            if len(names) == n:
                return names
    raise Skip("too few distractors")


def _mcq(task: str, term: Term, question: str, correct: str, distractors: list[str],
         position: int | LetterDeck) -> KGPrompt:
    if isinstance(position, LetterDeck):
        position = position.next()  # drawn only once the prompt exists, so skips keep the balance
    names = list(distractors)
    names.insert(position, correct)
    options = dict(zip(LETTERS, names))
    letter = LETTERS[position]
    return KGPrompt(task, term.id, question, f"The answer is {letter}. {correct}", options, letter)


def description(onto: Ontology, term: Term, rng: random.Random) -> KGPrompt:
    answer = onto.describe(term)
    if not answer:
        raise Skip("no definition")
    question = _template(onto, "description", rng).format(term=onto.mention(term), Term=upper_first(term.name),
                                                              code=term.code)
    return KGPrompt("description", term.id, question, answer)


def relations(onto: Ontology, term: Term, rng: random.Random) -> list[KGPrompt]:
    """One prompt per relation of the term (is_a parents first)."""
    edges = onto.edges(term)
    if not edges:
        raise Skip("no relation")
    out = []
    a = onto.mention(term)
    for answer, other in edges:
        b = onto.mention(other)
        question = _template(onto, "relation", rng).format(a=a, b=b)
        out.append(KGPrompt("relation", term.id, question, answer.format(A=upper_first(term.name), a=a, b=b)))
    return out


def mcq_definition(onto: Ontology, term: Term, rng: random.Random, pool: Sequence[Term],
                   position: int | LetterDeck, exclude: Iterable[str] = ()) -> KGPrompt:
    """Which term matches the definition (or code): the term and 3 distractors, nearest first."""
    clue = onto.clue(term)
    if not clue:
        raise Skip("no definition")
    banned_names = {term.name, *term.synonyms}
    distractors = pick_distractors(rng, onto.near(term), pool, {term.id, *exclude}, banned_names, term.kind)
    question = _template(onto, "mcq_definition", rng).format(definition=clue, code=term.code)
    return _mcq("mcq_definition", term, question, term.name, distractors, position)


def mcq_parent(onto: Ontology, term: Term, rng: random.Random, pool: Sequence[Term],
               position: int | LetterDeck, exclude: Iterable[str] = ()) -> KGPrompt:
    """Which is the term's parent: one parent and 3 terms that are not ancestors of the term."""
    parents = onto.parents(term)
    if not parents:
        raise Skip("no parent")
    parent = rng.choice(parents)
    banned_ids = {term.id, *onto.ancestors(term.id), *exclude}
    banned_names = {term.name, parent.name, *(onto.terms[a].name for a in banned_ids if a in onto.terms)}
    distractors = pick_distractors(rng, onto.near(parent), pool, banned_ids, banned_names, parent.kind)
    question = _template(onto, "mcq_parent", rng).format(Term=upper_first(term.name), term=onto.mention(term),
                                                        level=parent.kind or "class")
    return _mcq("mcq_parent", term, question, parent.name, distractors, position)


def _mentions(phrases: Iterable[str]) -> re.Pattern | None:
    """A case-blind pattern finding any of `phrases` as whole words ("S80" not in "S80.1")."""
    alts = sorted({p for p in phrases if p}, key=len, reverse=True)
    if not alts:
        return None
    return re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, alts)) + r")(?![\w]|\.\w)", re.IGNORECASE)


class LeakGuard:
    """Finds training prompts that state what the definition probe asks about a held-out term:
    its name together with its clue (its definition, its ICD-10 code). E.g. the description of
    an ICD-10 subcategory names its held-out category with the category's code. (A held-out
    term's parent is stated only in the term's own prompts, which are not built at all.)"""

    def __init__(self, onto: Ontology, held: Iterable[Term]):
        self.facts: dict[str, re.Pattern | None] = {}
        for t in held:
            self.facts[t.name.lower()] = _mentions([(onto.clue(t) or "").rstrip("."), t.code])
        self.patterns = {name: _mentions([name]) for name in self.facts}

    def leaks(self, prompt: KGPrompt) -> bool:
        if not self.facts:
            return False
        text = prompt.user_text() + "\n" + prompt.answer
        lower = text.lower()
        for name, fact in self.facts.items():  # a substring test first: most prompts name no held term
            if name in lower and fact is not None and self.patterns[name].search(text) and fact.search(text):
                return True
        return False


def kg_prompts(onto: Ontology, terms: Sequence[Term], tasks: Iterable[str] = TASKS, seed: int = 0,
               pool: Sequence[Term] | None = None, exclude: Iterable[str] = ()
               ) -> tuple[list[KGPrompt], Counter]:
    """Prompts for every term and task, and the skipped counts by `task: reason`.

    `pool` supplies distractors beyond siblings (default: `terms`); ids in `exclude` (held-out
    probe terms) are never used as distractors, and a prompt that states what the probe asks
    about one of them is left out (counted as `<task>: states a probe answer`)."""
    exclude = set(exclude)
    pool = [t for t in (terms if pool is None else pool) if t.id not in exclude]
    guard = LeakGuard(onto, (onto.terms[i] for i in sorted(exclude) if i in onto.terms))
    deck = LetterDeck(random.Random(f"{seed}|letters"))
    out: list[KGPrompt] = []
    skipped: Counter = Counter()
    for term in terms:
        for task in tasks:
            rng = term_rng(seed, task, term)
            try:
                if task == "description":
                    made = [description(onto, term, rng)]
                elif task == "relation":
                    made = relations(onto, term, rng)
                elif task == "mcq_definition":
                    made = [mcq_definition(onto, term, rng, pool, deck, exclude)]
                elif task == "mcq_parent":
                    made = [mcq_parent(onto, term, rng, pool, deck, exclude)]
                else:
                    raise ValueError(f"unknown KG task {task!r}")
            except Skip as e:
                skipped[f"{task}: {e}"] += 1
                continue
            for p in made:
                if guard.leaks(p):
                    skipped[f"{task}: states a probe answer"] += 1
                else:
                    out.append(p)
    return out, skipped


PROBE_KINDS = {"definition": mcq_definition, "parent": mcq_parent}


def probe_rows(onto: Ontology, terms: Sequence[Term], pool: Sequence[Term], seed: int = 0
               ) -> tuple[list[dict], Counter]:
    """MedQA-layout MCQ rows (definition and parent kinds) for the held-out `terms`."""
    deck = LetterDeck(random.Random(f"{seed}|probe-letters"))
    rows, skipped = [], Counter()
    for term in terms:
        for kind, build in PROBE_KINDS.items():
            rng = term_rng(seed, f"probe-{kind}", term)
            try:
                p = build(onto, term, rng, pool, deck)
            except Skip as e:
                skipped[f"probe-{kind}: {e}"] += 1
                continue
            rows.append({
                "question": p.question, "options": p.options, "answer": p.options[p.answer_idx],
                "answer_idx": p.answer_idx, "meta_info": f"probe-{kind}", "id": f"{term.id}-{kind}",
            })
    return rows, skipped


def write_probe(path: str | Path, rows: Iterable[dict]) -> int:
    """Write probe rows as JSONL (one MedQA-USMLE row a line); returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
