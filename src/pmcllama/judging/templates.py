"""Judge prompt templates, versioned, and reading a verdict out of a judge's reply.

A template is a system message (may be empty) and a user message with the placeholders
`{input}`, `{output_a}`, `{output_b}` and, for prompts that carry a reference answer,
`{reference}` (the `user_ref` variant). The id of a template (`name-vN`) is part of the cache
key, so changing a template's words means a new version.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.inputs import read_text

VERDICT_RULE = ('Output your final verdict by strictly following this format: "[[A]]" if output A is '
                'better, "[[B]]" if output B is better, and "[[C]]" for a tie.')


@dataclass(frozen=True)
class Template:
    id: str
    system: str
    user: str
    user_ref: str
    summary: str

    def messages(self, prompt: str, first: str, second: str, reference: str | None = None) -> list[dict]:
        text = (self.user_ref if reference is not None else self.user)
        text = text.replace("{input}", prompt).replace("{output_a}", first).replace("{output_b}", second)
        text = text.replace("{reference}", reference or "")
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": text}]


# The paper's question (Fig. 3), word for word; its model names become position labels, so that
# judging both orders is a fair swap, and the verdict rule is added so the reply can be read.
_PAPER_Q = "Considering the two outputs, which one do you think is more related to the input?"
_PAPER = (f"{_PAPER_Q}\nInput: {{input}}\nOutput A: {{output_a}}\nOutput B: {{output_b}}\n\n"
          f"{VERDICT_RULE}")
_PAPER_REF = (f"{_PAPER_Q}\nInput: {{input}}\nReference answer: {{reference}}\nOutput A: {{output_a}}\n"
              f"Output B: {{output_b}}\n\n{VERDICT_RULE}")

# FastChat llm_judge's `pair-v2` prompt, asked about medicine.
_MED_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the medical prompt displayed below. You should choose the assistant whose response "
    "is more medically correct, more relevant to the prompt and more helpful. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure "
    "that the order in which the responses were presented does not influence your decision. Do not allow "
    "the length of the responses to influence your evaluation. Be as objective as possible. After "
    "providing your explanation, output your final verdict by strictly following this format: \"[[A]]\" "
    "if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")
_MED_REF_SYSTEM = _MED_SYSTEM.replace(
    "Begin your evaluation by comparing",
    "You will be given a reference answer written by an expert; identify the mistakes of each response "
    "against it. Begin your evaluation by comparing")
_ANSWERS = ("[The Start of Assistant A's Answer]\n{output_a}\n[The End of Assistant A's Answer]\n\n"
            "[The Start of Assistant B's Answer]\n{output_b}\n[The End of Assistant B's Answer]")
_MED = "[User Question]\n{input}\n\n" + _ANSWERS
_MED_REF = ("[User Question]\n{input}\n\n[The Start of Reference Answer]\n{reference}\n"
            "[The End of Reference Answer]\n\n" + _ANSWERS)

TEMPLATES: dict[str, Template] = {
    "paper-relatedness-v1": Template("paper-relatedness-v1", "", _PAPER, _PAPER_REF,
                                     "the paper's Fig. 3 question (relatedness to the input), verbatim"),
    "pairwise-medical-v1": Template("pairwise-medical-v1", _MED_SYSTEM, _MED, _MED_REF,
                                    "FastChat pair-v2 style: medical correctness, relevance, helpfulness"),
}

_VERDICT = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)


def parse_verdict(reply: str) -> str | None:
    """'A', 'B' or 'C' (tie) from `[[A]]`/`[[B]]`/`[[C]]` (or `[[tie]]`); the last one counts; None without one."""
    found = _VERDICT.findall(reply or "")
    if not found:
        return None
    last = found[-1].upper()
    return "C" if last == "TIE" else last


def load_template(name: str) -> Template:
    """A built-in template by id, or a user's template file (a text file: the user message, with
    `{input}`, `{output_a}`, `{output_b}` and optionally `{reference}`)."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    path = Path(name)
    if not path.exists():
        raise UserError(f"unknown judge template {name!r}: use one of {', '.join(TEMPLATES)} or a template file")
    text = read_text(path, "judge template file")
    missing = [p for p in ("{input}", "{output_a}", "{output_b}") if p not in text]
    if missing:
        raise UserError(f"judge template has no {missing[0]} placeholder (it needs {{input}}, {{output_a}} "
                        "and {output_b}; {reference} is optional)", path)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Template(f"file:{path.name}@{digest}", "", text, text, f"user template {path}")
