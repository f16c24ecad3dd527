"""Scoring by generation (`mode=generate`, `mode=cot`): answer texts, extraction, vote.

Prompts are encoded as in loglik scoring (any BOS the tokenizer adds by default, then the
text), cut from the left to `max_length - max_new_tokens` tokens when longer (counted as
truncated), and generated `batch_size` prompts at a time, longest first, left-padded with
an attention mask so every row ends where its answer starts. Greedy when `temperature` is
0; otherwise sampling with `temperature` and `top_p`, `samples` answers per prompt, the
generator seeded with `seed` once per batch (the same config gives the same texts).

Each answer is read with `extract.extract` (chain-of-thought: the last answer statement
wins); with several samples the parsed answers vote (`extract.vote`). A question none of
whose samples can be read has `pred` None: it counts as wrong and is reported as
unparsable. `generate_texts` takes any `generate_fn(prompts, n) -> [[text] * n]` so the
logic can be tested without a model.
"""
from __future__ import annotations

from typing import Callable, Sequence

from pmcllama.benchmarks.base import Item
from pmcllama.benchmarks.extract import extract, vote
from pmcllama.benchmarks.prompting import labels_of
from pmcllama.benchmarks.scoring import special_prefix
from pmcllama.progress import progress as progress_bar


def hf_generate_fn(model, tokenizer, *, max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0, max_length: int = 2048) -> Callable[[list[str], int], list[list[str]]]:
    """A `generate_fn` on the shared batched engine (`pmcllama.serve.engine`): prompts as
    loglik scoring encodes them, cut from the left to leave room for the answer; the `n`
    samples of a prompt share its prefill. Sampled texts are seeded per prompt (`seed` plus
    the prompt's running number), so the same config gives the same texts."""
    from pmcllama.serve.engine import Engine, Request

    prefix = special_prefix(tokenizer)
    room = max(1, max_length - max_new_tokens)
    engine = Engine(model, tokenizer, context=max_length)
    seen = [0]

    def fn(prompts: list[str], n: int) -> list[list[str]]:
        enc = tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
        reqs = []
        for e in enc:
            reqs.append(Request((prefix + list(e))[-room:], max_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, seed=seed + 7919 * seen[0], n=n))
            seen[0] += 1
        return [r.texts for r in engine.generate(reqs)]

    return fn


def token_lengths(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Tokens of each prompt as the model sees it (with any default BOS)."""
    enc = tokenizer(list(prompts), add_special_tokens=False, verbose=False)["input_ids"]
    return [len(special_prefix(tokenizer)) + len(e) for e in enc]


def generate_texts(generate_fn, prompts: Sequence[str], samples: int, batch_size: int,
                   lengths: Sequence[int] | None = None, progress: bool = True,
                   desc: str = "generating") -> list[list[str]]:
    """`samples` texts per prompt, batches taken longest first; results in input order."""
    key = lengths if lengths is not None else [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -key[i])
    texts: list[list[str]] = [[] for _ in prompts]
    with progress_bar(total=len(prompts), unit="q", desc=desc, disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, t in zip(chunk, generate_fn([prompts[i] for i in chunk], samples)):
                texts[i] = list(t)
            bar.update(len(chunk))
    return texts


def option_texts(item: Item) -> list[str] | None:
    """The option texts of a letter item: its document's options, or for a bare Item the
    'A. text' lines of its prompt; else None."""
    labels = labels_of(item)
    if item.doc is not None:
        options = item.doc.options
        return [options[lab] for lab in labels] if options and all(lab in options for lab in labels) else None
    found = {}
    for line in item.prompt.splitlines():
        for lab in labels:
            if len(lab) == 1 and line.startswith(f"{lab}. "):
                found[lab] = line[3:]
    return [found[lab] for lab in labels] if len(found) == len(labels) else None


def judge(item: Item, texts: Sequence[str], last: bool, truncated: bool = False) -> dict:
    """The per-item record of generated answers: parsed preds, vote, correctness."""
    labels = labels_of(item)
    options = option_texts(item)
    preds = [extract(t, labels, options, last=last) for t in texts]
    pred, votes = vote(preds)
    return {
        "id": item.id, "gold": item.gold, "pred": pred, "correct": pred == item.gold,
        "parsed": pred is not None, "sample_preds": preds,
        "votes": {labels[k]: v for k, v in sorted(votes.items())},
        "confidence": (votes[pred] / len(texts)) if pred is not None else 0.0,
        "responses": list(texts), "truncated": truncated, "prompt_sha256": item.prompt_sha256,
    }


def evaluate_generated(items: Sequence[Item], generate_fn, *, samples: int = 1, batch_size: int = 8,
                       cot: bool = False, truncated: Sequence[bool] | None = None,
                       lengths: Sequence[int] | None = None, progress: bool = True,
                       desc: str = "generating") -> list[dict]:
    """Generate, extract and vote for every item; records in input order."""
    texts = generate_texts(generate_fn, [it.prompt for it in items], samples, batch_size,
                           lengths, progress, desc)
    flags = list(truncated) if truncated is not None else [False] * len(items)
    return [judge(it, t, cot, f) for it, t, f in zip(items, texts, flags)]
