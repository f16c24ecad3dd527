"""The answer in a generated text, and the majority vote over several (self-consistency).

`extract(text, labels, options)` returns the index of the choice a free-text answer names,
or None when it names none (counted as unparsable, and wrong). `labels` are the choice
labels ("A".."E", or "yes"/"no"/"maybe"); `options` the option texts when known. The text
is first cut where the model starts a new item ("\\nQuestion:", "\\nAbstract:", ...; and,
unless `last`, at the first blank line, since after k-shot MMLU prompts the next invented
question starts without a marker; the blank line before the paper's "###Answer:" section, which
follows its "###Rationale:", does not cut), and markdown emphasis (`**B**`) is dropped. Then, in
order, the first rule that matches wins:

1. the paper's form "OPTION B IS CORRECT" (any case; "Option (B) is the correct one");
2. an answer statement: "the answer is B", "Answer: B", "correct answer: (B)", "final
   answer is option B", "answer = yes" (words in any case; a letter label must be a capital
   letter standing alone, so "the answer is a drug" is not A);
3. the text opens with the label: "B", "B.", "(B)", "B) text", "B: text", "Yes, because",
   "no." (a lone capital letter must be followed by punctuation, a line end or the end, or
   by its own option text, so "A 45-year-old..." is not A);
4. the text opens with exactly one option's text ("Metformin is the drug of choice").

With `last=True` (chain-of-thought, where the answer ends the reasoning) rules 1 and 2 take
the last match instead of the first. `vote` picks the most frequent parsed answer of k
samples, ties going to the answer reached first.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Sequence

STOPS = ("\nQuestion:", "\nQuestion :", "\nAbstract:", "\nQ:", "\n\n\n")
# the paper's trained layout puts its answer after a blank line: "###Rationale: ...\n\n###Answer: ..."
_ANSWER_SECTION = re.compile(r"\n[ \t]*\n(?=[ \t]*###[ \t]*Answer)", re.IGNORECASE)


def cut(text: str, stops: Sequence[str] = STOPS) -> str:
    """The text up to the first stop string (where a base model starts the next item)."""
    end = len(text)
    for s in stops:
        k = text.find(s)
        if 0 <= k < end:
            end = k
    return text[:end]


def _label_group(labels: Sequence[str]) -> str:
    letters = all(len(x) == 1 and x.isalpha() for x in labels)
    alts = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    # a letter label stands alone and is a capital; word labels match in any case
    return rf"(?<![A-Za-z])({alts})(?![A-Za-z])" if letters else rf"(?i:\b({alts})\b)"


@lru_cache(maxsize=64)
def _patterns(labels: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    lab = _label_group(labels)
    option_is = re.compile(rf"(?i:option)\s*[\(\[]?{lab}[\)\]]?\s*(?i:is\s+(?:the\s+)?correct)")
    answer_is = re.compile(
        rf"(?i:answer)\s*(?i:is|was|would\s+be|will\s+be|:|=|-)?\s*(?i:option\s*|choice\s*)?"
        rf"[:\s]*[\(\[\"']?{lab}")
    return option_is, answer_is


def _leading(text: str, labels: Sequence[str], options: Sequence[str] | None) -> int | None:
    letters = all(len(x) == 1 and x.isalpha() for x in labels)
    head = text.lstrip(" \t\n\"'*#>-")
    if letters:
        m = re.match(r"[\(\[]?([A-Z])(?:[\)\]\.:,;]|\s*$|\s*\n)", head)
        if m and m.group(1) in labels:
            return labels.index(m.group(1))
        m = re.match(r"([A-Z])\s+(.+)", head)
        if m and m.group(1) in labels and options:
            opt = options[labels.index(m.group(1))].strip().lower()
            if opt and m.group(2).strip().lower().startswith(opt):
                return labels.index(m.group(1))
        return None
    m = re.match(r"(\w+)", head)
    words = [x.lower() for x in labels]
    if m and m.group(1).lower() in words:
        return words.index(m.group(1).lower())
    return None


def _by_option_text(text: str, options: Sequence[str]) -> int | None:
    head = text.strip().lower()
    hits = [k for k, o in enumerate(options) if o.strip() and head.startswith(o.strip().lower())]
    if len(hits) > 1:  # one option's text may be a prefix of another's: take the longest
        hits = [max(hits, key=lambda k: len(options[k].strip()))]
    return hits[0] if len(hits) == 1 else None


def extract(text: str, labels: Sequence[str], options: Sequence[str] | None = None,
            last: bool = False) -> int | None:
    """Index of the choice that `text` answers, or None when it cannot be read."""
    labels = list(labels)
    stops = STOPS if last else STOPS + ("\n\n",)
    text = cut(_ANSWER_SECTION.sub("\n", text.lstrip()), stops).replace("**", "").replace("__", "")
    for pattern in _patterns(tuple(labels)):
        found = list(pattern.finditer(text))
        if found:
            m = found[-1] if last else found[0]
            value = m.group(1)
            match = [k for k, x in enumerate(labels) if x == value or x.lower() == value.lower()]
            return match[0]
    k = _leading(text, labels, options)
    if k is not None:
        return k
    return _by_option_text(text, options) if options else None


def vote(preds: Sequence[int | None]) -> tuple[int | None, dict[int, int]]:
    """(majority answer, {answer: votes}) over parsed predictions; ties -> reached first."""
    counts = Counter(p for p in preds if p is not None)
    if not counts:
        return None, {}
    first = {p: i for i, p in reversed(list(enumerate(preds))) if p is not None}
    best = max(counts, key=lambda p: (counts[p], -first[p]))
    return best, dict(counts)
