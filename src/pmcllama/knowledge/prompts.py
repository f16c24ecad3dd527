"""Knowledge-graph prompts: ontology terms -> question/answer pairs, and the knowledge probe.

Four tasks, each with a few paraphrased question templates:
- `description`:    "What is <term>?" -> the definition (+ synonyms),
- `relation`:       "What is the relation between <a> and <b>?" -> "<A> is a kind of <b>.",
- `mcq_definition`: a definition, four term names A-D, answer "The answer is C. <term>",
- `mcq_parent`:     "<term> is a kind of which of the following?", the parent among three
                    terms that are not ancestors of the term.

Everything random (template, distractors, answer letter) comes from `random.Random` objects
seeded from the caller's seed, so the same seed gives the same prompts. The knowledge probe
is the MCQ kinds over held-out terms, written in the MedQA-USMLE JSONL layout.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pmcllama.knowledge.obo import Term
from pmcllama.knowledge.ontology import Ontology, lower_first

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
    seen: set[str] = set()
    frontier = [term_id]
    while frontier:
        node = onto.terms.get(frontier.pop())
        for p in node.parents if node else []:
            if p not in seen:
                seen.add(p)
                frontier.append(p)
    return seen


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


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


def pick_distractors(rng: random.Random, first: Sequence[Term], pool: Sequence[Term],
                     banned_ids: set[str], banned_names: set[str], n: int = 3) -> list[str]:
    """`n` distinct names: from `first` (shuffled) first, then from `pool`; never a banned id or name."""
    names: list[str] = []
    taken = {x.lower() for x in banned_names}
    for group in (first, pool):
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
    if not term.definition:
        raise Skip("no definition")
    answer = _sentence(term.definition)
    if term.synonyms:
        answer += f" It is also known as {', '.join(term.synonyms)}."
    question = rng.choice(TEMPLATES["description"]).format(term=lower_first(term.name))
    return KGPrompt("description", term.id, question, answer)


def relations(onto: Ontology, term: Term, rng: random.Random) -> list[KGPrompt]:
    """One prompt per parent in the ontology."""
    parents = [onto.terms[p] for p in term.parents if p in onto.terms and onto.terms[p].name]
    if not parents:
        raise Skip("no parent")
    out = []
    for parent in parents:
        question = rng.choice(TEMPLATES["relation"]).format(a=lower_first(term.name), b=lower_first(parent.name))
        out.append(KGPrompt("relation", term.id, question, f"{term.name} is a kind of {lower_first(parent.name)}."))
    return out


def mcq_definition(onto: Ontology, term: Term, rng: random.Random, pool: Sequence[Term],
                   position: int | LetterDeck, exclude: Iterable[str] = ()) -> KGPrompt:
    """Which term matches the definition: the term and 3 distractors (siblings first)."""
    if not term.definition:
        raise Skip("no definition")
    banned_names = {term.name, *term.synonyms}
    distractors = pick_distractors(rng, onto.siblings(term), pool, {term.id, *exclude}, banned_names)
    question = rng.choice(TEMPLATES["mcq_definition"]).format(definition=_sentence(term.definition))
    return _mcq("mcq_definition", term, question, term.name, distractors, position)


def mcq_parent(onto: Ontology, term: Term, rng: random.Random, pool: Sequence[Term],
               position: int | LetterDeck, exclude: Iterable[str] = ()) -> KGPrompt:
    """Which is the term's parent: one parent and 3 terms that are not ancestors of the term."""
    parents = [onto.terms[p] for p in term.parents if p in onto.terms and onto.terms[p].name]
    if not parents:
        raise Skip("no parent")
    parent = rng.choice(parents)
    banned_ids = {term.id, *ancestors(onto, term.id), *exclude}
    banned_names = {term.name, parent.name, *(onto.terms[a].name for a in banned_ids if a in onto.terms)}
    distractors = pick_distractors(rng, onto.siblings(parent), pool, banned_ids, banned_names)
    template = rng.choice(TEMPLATES["mcq_parent"])
    question = template.format(Term=term.name, term=lower_first(term.name))
    return _mcq("mcq_parent", term, question, parent.name, distractors, position)


def kg_prompts(onto: Ontology, terms: Sequence[Term], tasks: Iterable[str] = TASKS, seed: int = 0,
               pool: Sequence[Term] | None = None, exclude: Iterable[str] = ()
               ) -> tuple[list[KGPrompt], Counter]:
    """Prompts for every term and task, and the skipped counts by `task: reason`.

    `pool` supplies distractors beyond siblings (default: `terms`); ids in `exclude` (held-out
    probe terms) are never used as distractors."""
    exclude = set(exclude)
    pool = [t for t in (terms if pool is None else pool) if t.id not in exclude]
    deck = LetterDeck(random.Random(f"{seed}|letters"))
    out: list[KGPrompt] = []
    skipped: Counter = Counter()
    for term in terms:
        for task in tasks:
            rng = term_rng(seed, task, term)
            try:
                if task == "description":
                    out.append(description(onto, term, rng))
                elif task == "relation":
                    out.extend(relations(onto, term, rng))
                elif task == "mcq_definition":
                    out.append(mcq_definition(onto, term, rng, pool, deck, exclude))
                elif task == "mcq_parent":
                    out.append(mcq_parent(onto, term, rng, pool, deck, exclude))
                else:
                    raise ValueError(f"unknown KG task {task!r}")
            except Skip as e:
                skipped[f"{task}: {e}"] += 1
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
