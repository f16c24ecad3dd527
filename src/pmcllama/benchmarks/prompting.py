"""The final prompt of an item: scoring mode, k-shot examples, chat template.

Every loader writes the zero-shot lm-evaluation-harness prompt (ending in "Answer:"). On
top of it:

- `mode=loglik` and `mode=generate` use that prompt as it is (`generate` reads the
  answer from the greedy or sampled text with `benchmarks.extract`);
- `mode=cot` renders the item's document with the reason-then-answer instruction
  `COT_SUFFIX` in place of the final "Answer:" (template suffix `+cot-v1`), the letters or
  labels of the item filled in::

      ...\\nB. Beta\\nThink step by step, then finish with "The answer is X" where X is one
      of A, B, C, D.\\nReasoning:

- `shots=k` (loglik and generate) puts k solved examples before the question, as
  lm-eval's fewshot layout: each example is its prompt + " " + its gold choice, the
  examples and the question are joined by a blank line ("\\n\\n"); an MMLU subject header
  ("The following are multiple choice questions...") is written once, at the top, as
  lm-eval's `description`. Items loaded from a benchmark file are rendered again from their
  documents (the task's description, then `doc_to_text` + " " + the gold choice per example);
  only a bare `Item` (a prompt without a document) has its text split at "Answer:" and at the
  MMLU header. The examples come from `fewshot_path`, a train/dev file of the
  same format (never the evaluated file), drawn for each item with a generator seeded by
  (seed, item id), so a question keeps its examples whatever the order, limit or batch;
  an example with the item's id or prompt is never used for that item. With `fixed=True`
  (`fewshot_fixed: true`, lm-eval's `fewshot_config`) k+1 examples are drawn once with
  `seed` and every question gets the first k of them that are not itself, so the prompts
  share one token prefix that the scorer computes once (`benchmarks.packed`);
- `chat_template=True` sends the whole text as one user message through the tokenizer's
  chat template with the assistant turn opened (loglik continuations follow that turn).

The template string recorded in results.json names each layer, e.g.
`medqa-letters-lmeval-v1+3shot-v1+chat-v1`.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from pmcllama.benchmarks.base import Item
from pmcllama.benchmarks.scoring import special_prefix
from pmcllama.errors import UserError

COT_SUFFIX = 'Think step by step, then finish with "The answer is X" where X is one of {labels}.\nReasoning:'
ANSWER_TAIL = "Answer:"
MMLU_HEAD = re.compile(r"^The following are multiple choice questions \(with answers\) about [^\n]*\.\n\n")
FEWSHOT_SEP = "\n\n"


def template_name(base: str, mode: str, shots: int, chat: bool) -> str:
    parts = [base]
    if mode != "loglik":
        parts.append(f"{mode}-v1" if mode == "cot" else "gen-v1")
    if shots:
        parts.append(f"{shots}shot-v1")
    if chat:
        parts.append("chat-v1")
    return "+".join(parts)


def labels_of(item: Item) -> list[str]:
    """The choice labels a generated answer names: 'A'.., or 'yes'/'no'/'maybe'."""
    return [c.strip() for c in item.choices]


def cot_prompt(item: Item) -> str:
    suffix = COT_SUFFIX.format(labels=", ".join(labels_of(item)))
    if item.doc is not None:
        return item.task.description(item.doc) + item.task.question(item.doc) + suffix
    if not item.prompt.endswith(ANSWER_TAIL):
        raise UserError(f"item {item.id}: prompt does not end with 'Answer:'; cot cannot rewrite it")
    return item.prompt[: -len(ANSWER_TAIL)] + suffix


def _seed_for(seed: int, item_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:16], 16)


def draw_examples(item: Item, pool: Sequence[Item], k: int, seed: int) -> list[Item]:
    """k examples from `pool` for `item`, deterministic in (seed, item.id), never the item."""
    usable = [ex for ex in pool if ex.id != item.id and ex.prompt != item.prompt]
    if len(usable) < k:
        raise UserError(f"item {item.id}: {k} shots asked but the few-shot file has only "
                        f"{len(usable)} other items")
    return random.Random(_seed_for(seed, item.id)).sample(usable, k)


def fixed_examples(item: Item, drawn: Sequence[Item], k: int) -> list[Item]:
    """The first k of the once-drawn examples that are not `item` itself."""
    usable = [ex for ex in drawn if ex.id != item.id and ex.prompt != item.prompt]
    if len(usable) < k:
        raise UserError(f"item {item.id}: {k} shots asked but the few-shot file has only "
                        f"{len(usable)} other items")
    return usable[:k]


def fewshot_prompt(item: Item, examples: Sequence[Item]) -> str:
    """lm-eval's few-shot layout: the description once, then each example's text with its
    gold choice, then the question, joined by a blank line."""
    if item.doc is not None and all(ex.doc is not None for ex in examples):
        task = item.task
        shots = [ex.task.doc_to_text(ex.doc) + ex.choices[ex.gold] for ex in examples]
        return task.description(item.doc) + FEWSHOT_SEP.join(shots + [task.doc_to_text(item.doc)])
    head = MMLU_HEAD.match(item.prompt)
    strip = (lambda p: MMLU_HEAD.sub("", p, count=1)) if head else (lambda p: p)
    shots = [strip(ex.prompt) + ex.choices[ex.gold] for ex in examples]
    body = FEWSHOT_SEP.join(shots + [strip(item.prompt)])
    return (head.group(0) if head else "") + body


def chat_prompt(tokenizer, text: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("chat_template=true but the model's tokenizer has no chat template")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and rendered.startswith(bos) and special_prefix(tokenizer):
        rendered = rendered[len(bos):]  # the scorers put the tokenizer's BOS in front already
    return rendered


def check_fewshot_file(fewshot_path: str | Path, path: str | Path) -> None:
    """The few-shot file must not be the evaluated file (same path or same bytes)."""
    a, b = Path(fewshot_path), Path(path)
    if a.resolve() == b.resolve() or (a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()):
        raise UserError("fewshot_path is the evaluated benchmark file itself; give a train/dev "
                        "file, never the evaluated split", fewshot_path)


def build(items: Sequence[Item], mode: str, shots: int = 0, pool: Sequence[Item] = (),
          seed: int = 0, tokenizer=None, chat: bool = False, fixed: bool = False) -> list[Item]:
    """Items whose prompt is the final text for `mode`, `shots` and the chat template
    (`fixed`: the same examples before every question)."""
    out = []
    drawn = random.Random(_seed_for(seed, "fewshot_fixed")).sample(
        list(pool), min(len(pool), shots + 1)) if fixed and shots else []
    for it in items:
        text = it.prompt
        if shots:
            examples = fixed_examples(it, drawn, shots) if fixed else draw_examples(it, pool, shots, seed)
            text = fewshot_prompt(it, examples)
        if mode == "cot":  # from the document, unless examples were put before it
            text = cot_prompt(replace(it, prompt=text, doc=None) if shots else it)
        if chat:
            text = chat_prompt(tokenizer, text)
        out.append(replace(it, prompt=text))
    return out
