"""Padding-free log-likelihood scoring: many questions laid end to end in one row.

The scorer of `benchmarks.scoring` for models that take the segment attention of
`training/varlen.py` (plain causal softmax attention through transformers' interface):

- **token-budget batches** (`plan`): questions, longest first, fill a forward up to
  `max_batch_tokens` model-input tokens (and at most `batch_size` questions when set), so
  short MedMCQA-style prompts go dozens to a forward and long PubMedQA abstracts few;
- **no pads**: each question's tokens are one segment of a single flattened row whose position
  ids restart per question; attention runs inside each segment only, so no pad token is ever
  computed and no mask is built for plain segments;
- **a question's prompt once**: the distinct model inputs of a question (one per choice, or one
  in all when every choice is a single token) share their longest common token prefix; it is
  one segment, and each input's remaining tokens are a segment that sees it in full before its
  own causal tokens (choices as continuations of one context);
- **a shared prefix once** (`shared_prefix`): the longest token prefix common to every request
  of the run (fixed few-shot examples, `fewshot_fixed: true`; MMLU's subject header) is run
  once; its keys and values are put before every segment of every batch, and position ids
  continue after it;
- the output layer and its fp32 log-softmax run only at the positions whose next token is a
  continuation token.

Log-likelihoods equal the padded path's within float rounding (tests/test_eval_packed.py).
Tensors live on the model's device: the same code runs on CPU and CUDA, with bf16 autocast
of the transformer under `precision="bf16"`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from pmcllama.benchmarks.scoring import Request

# tokens: a shorter common prefix (the 2 of "Question:") is left in each prompt; MMLU's
# 15-token subject header computed once took 1.24x less time on its 4-option shape with the
# same predictions (2-core AMD EPYC, AVX2, fp32; under 16, the header was not shared)
MIN_SHARED_PREFIX = 8


def common_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix common to all `seqs`."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def shared_prefix(requests: Sequence[Sequence[Request]]) -> int:
    """Tokens common to every request's input, ending before the first scored position of any
    (so every scored hidden state is computed in a batch); 0 when under MIN_SHARED_PREFIX."""
    flat = [r for reqs in requests for r in reqs]
    if len(flat) < 2:
        return 0
    n = min(common_length([r.inp for r in flat]), min(len(r.inp) - len(r.cont) for r in flat))
    return n if n >= MIN_SHARED_PREFIX else 0


@dataclass
class Question:
    """One question's segments: the common part of its inputs, then each input's own tail."""

    context: tuple[int, ...]
    tails: list[tuple[int, ...]]  # one per distinct input; () when the input is the context
    inputs: dict[tuple[int, ...], int] = field(default_factory=dict)  # input -> tail index

    @property
    def tokens(self) -> int:
        return len(self.context) + sum(len(t) for t in self.tails)


def layout(requests: Sequence[Request], skip: int) -> Question:
    """A question's segments after the first `skip` tokens (the shared prefix)."""
    inputs: dict[tuple[int, ...], int] = {}
    for r in requests:
        inputs.setdefault(r.inp, len(inputs))
    rest = [inp[skip:] for inp in inputs]
    c = common_length(rest)
    return Question(rest[0][:c], [r[c:] for r in rest], inputs)


def plan(costs: Sequence[int], max_tokens: int, max_questions: int | None) -> list[list[int]]:
    """Batches of question indices, longest first, each at most `max_tokens` tokens (a longer
    question goes alone) and at most `max_questions` questions."""
    order = sorted(range(len(costs)), key=lambda i: -costs[i])
    batches: list[list[int]] = []
    used = 0
    for i in order:
        full = batches and (used + costs[i] > max_tokens or len(batches[-1]) >= (max_questions or 1 << 60))
        if not batches or full:
            batches.append([])
            used = 0
        batches[-1].append(i)
        used += costs[i]
    return batches


class Flat:
    """One flattened row: token ids, position ids, the segment tree and where each scored
    position of each request sits in the row."""

    def __init__(self, offset: int):
        self.ids: list[int] = []
        self.pos: list[int] = []
        self.tree: list[tuple[int, int, tuple[int, int] | None]] = []
        self.offset = offset

    def _segment(self, tokens: Sequence[int], first_pos: int, ctx) -> int:
        start = len(self.ids)
        self.ids += tokens
        self.pos += range(first_pos, first_pos + len(tokens))
        self.tree.append((start, len(self.ids), ctx))
        return start

    def add(self, q: Question, requests: Sequence[Request]) -> list[list[int]]:
        """Lay out question `q`; returns, per request, the row indices of its scored positions."""
        base, c = self.offset, len(q.context)
        ctx_start = self._segment(q.context, base, None) if c else 0
        starts = [self._segment(t, base + c, (ctx_start, ctx_start + c) if c else None) if t else None
                  for t in q.tails]
        where = []
        for r in requests:
            tail = starts[q.inputs[r.inp]]
            first = len(r.inp) - len(r.cont) - base
            where.append([ctx_start + p if p < c else tail + p - c for p in range(first, first + len(r.cont))])
        return where


def prefix_states(model, tokens: Sequence[int], precision: str) -> dict:
    """Per-layer keys and values of `tokens` at positions 0.. (computed once, reused by every batch)."""
    import torch

    from pmcllama.benchmarks.scoring import _autocast, _decoder_and_head

    device = next(model.parameters()).device
    body = _decoder_and_head(model)[0] or model
    capture: dict = {}
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    with torch.inference_mode(), _autocast(device, precision):
        body(input_ids=ids, position_ids=torch.arange(len(tokens), device=device)[None], use_cache=False,
             pmcllama_tree=[(0, len(tokens), None)], pmcllama_capture=capture)
    return capture


def score_batch(model, questions: Sequence[Question], requests: Sequence[Sequence[Request]],
                prefix: dict | None, offset: int, precision: str) -> list[list[float]]:
    """Logliks of every request of `questions`, in one flattened forward."""
    import torch

    from pmcllama.benchmarks.scoring import _logits_at, continuation_sums

    device = next(model.parameters()).device
    flat = Flat(offset)
    where = [flat.add(q, reqs) for q, reqs in zip(questions, requests)]
    idx = torch.tensor([i for w in where for rows in w for i in rows], device=device)
    ids = torch.tensor([flat.ids], dtype=torch.long, device=device)
    extra = {"position_ids": torch.tensor([flat.pos], dtype=torch.long, device=device),
             "pmcllama_tree": flat.tree, "pmcllama_prefix": prefix}
    logits, rows = _logits_at(model, ids, torch.zeros_like(idx), idx, precision, **extra)
    flat_reqs = [r for reqs in requests for r in reqs]
    values = iter(continuation_sums(logits, flat_reqs, rows))
    return [[next(values) for _ in reqs] for reqs in requests]


def score_all(model, requests: Sequence[Sequence[Request]], max_batch_tokens: int,
              batch_size: int | None, precision: str, share_prefix: bool = True, bar=None) -> list[list[float]]:
    """Logliks per question (input order), in token-budget batches of flattened questions."""
    skip = shared_prefix(requests) if share_prefix else 0
    prefix = prefix_states(model, requests[0][0].inp[:skip], precision) if skip else None
    questions = [layout(reqs, skip) for reqs in requests]
    out: list[list[float]] = [[] for _ in requests]
    for batch in plan([q.tokens for q in questions], max_batch_tokens, batch_size):
        values = score_batch(model, [questions[i] for i in batch], [requests[i] for i in batch],
                             prefix, skip, precision)
        for i, v in zip(batch, values):
            out[i] = v
        if bar is not None:
            bar.update(len(batch))
    return out
