"""Micro-batches without padding: examples laid end to end in one row, attention per segment.

A segment is an example or, inside a packed example (training/packing.py), each stretch
whose position ids restart at 0. The attention function registered here as `pmcllama_varlen`
runs transformers' sdpa path with `is_causal` on each segment in turn, so no mask is built
and the fused causal kernels run on the segment's own tokens only: no work on pads, none on
attention across segments. The output layer and its log-softmax run only where a position
predicts a label (`logits_to_keep`): in instruction tuning the prompt tokens carry none. The
loss equals the padded batch's (tests/test_training_varlen.py). Micro-batches of equal whole
examples (pretraining windows) stay one row per example: one attention call for all of them.

Models whose attention does not go through transformers' attention interface refuse the
implementation, and models whose attention is not plain causal softmax over the whole sequence
(logit soft-capping, a sliding window shorter than seq_len) are not switched: `enable` returns
None and the loop collates padded micro-batches for them.

Scoring (benchmarks/packed.py) calls the same implementation with `pmcllama_tree` instead:
segments `(start, end, context)` where `context` is an earlier `(start, end)` of the row that
the segment sees in full before its own causal tokens (a question's prompt shared by its
choices' continuations), and optionally `pmcllama_prefix`, per-layer keys and values that
every segment sees first (fixed few-shot examples computed once), or `pmcllama_capture`, a
dict that receives each layer's keys and values (to compute such a prefix).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pmcllama.training.example import IGNORE, Example

NAME = "pmcllama_varlen"
_registered = False


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
              pmcllama_segments: Sequence[int] | None = None, **kwargs):
    """Causal attention inside each segment [bounds[i], bounds[i+1]) of the rows (which share the bounds)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if pmcllama_segments is None and "pmcllama_tree" not in kwargs:
        raise RuntimeError(f"attention '{NAME}' needs the segment bounds of the batch (pmcllama_segments=...)")
    kwargs.pop("is_causal", None)
    tree = kwargs.pop("pmcllama_tree", None)
    if tree is not None:
        return _tree_attention(module, query, key, value, tree, dropout, scaling, kwargs)
    sizes = [b - a for a, b in zip(pmcllama_segments[:-1], pmcllama_segments[1:])]
    # split, not slices: the backward of a slice writes its gradient into a zeroed full-size
    # tensor (one per segment, per q/k/v, per layer); split's backward is one concatenation
    outs = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True,
                                   **kwargs)[0]
            for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))]
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), None


def _tree_attention(module, query, key, value, tree, dropout, scaling, kwargs):
    """Each segment attends to the shared prefix, its context range, then causally to itself.

    In fp32 on a CPU where `pmcllama.gemv`'s kernels are built, one C call does it in place
    (`gemv.tree_attention`: 2.8-9.6x less time than the path below on the scoring rows of
    SmolLM2-135M, `bench/bench_attention.py`); otherwise, as follows.

    The segments without a context range go through ONE attention call: gathered into a
    (segments x longest segment) batch whose slots past a segment's end come after all of its
    tokens (so causality hides them from it) and are dropped afterwards; many short questions
    cost one kernel launch per layer instead of one each. Only attention sees those slots."""
    import torch

    from pmcllama import gemv

    prefix, capture = kwargs.pop("pmcllama_prefix", None), kwargs.pop("pmcllama_capture", None)
    if capture is not None:
        capture[module.layer_idx] = (key.contiguous(), value.contiguous())
    before = prefix[module.layer_idx] if prefix is not None else None
    if not dropout and gemv.tree_attention_fits(query, key, value, before):
        return gemv.tree_attention(query, key, value, tree, before, scaling)[None], None
    plain = [(a, b) for a, b, ctx in tree if ctx is None]
    parts = []  # (rows of the row, their outputs)
    if plain:
        rows = torch.tensor([i for a, b in plain for i in range(a, b)], device=query.device)
        parts.append((rows, _batched(module, query, key, value, plain, before, dropout, scaling, kwargs)))
    for a, b, ctx in tree:
        if ctx is None:
            continue
        ks = [before[0]] if before is not None else []
        vs = [before[1]] if before is not None else []
        k = torch.cat(ks + [key[:, :, ctx[0]:ctx[1]], key[:, :, a:b]], dim=2)
        v = torch.cat(vs + [value[:, :, ctx[0]:ctx[1]], value[:, :, a:b]], dim=2)
        seen = k.shape[2] - (b - a)
        mask = torch.ones(b - a, k.shape[2], dtype=torch.bool, device=query.device).tril(seen)[None, None]
        parts.append((slice(a, b), _sdpa(module, query[:, :, a:b], k, v, mask, dropout, scaling, kwargs)[0]))
    out = parts[0][1].new_empty(query.shape[2], query.shape[1], query.shape[3])  # (tokens, heads, dim)
    for rows, values in parts:
        out[rows] = values
    return out[None], None


def _sdpa(module, q, k, v, mask, dropout, scaling, kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling,
                                  is_causal=mask is None, **kwargs)[0]


def _batched(module, query, key, value, spans, before, dropout, scaling, kwargs):
    """Attention of the segments `spans` (each after the prefix `before`), as one call; returns
    the outputs of their real tokens, (tokens, heads, head_dim), in order."""
    import torch

    longest = max(b - a for a, b in spans)
    idx = torch.tensor([[min(a + j, b - 1) for j in range(longest)] for a, b in spans], device=query.device)
    real = torch.tensor([[j < b - a for j in range(longest)] for a, b in spans], device=query.device)
    q, k, v = (x[0][:, idx].transpose(0, 1) for x in (query, key, value))  # (segments, heads, longest, dim)
    mask = None
    if before is not None:
        seen = before[0].shape[2]
        k = torch.cat([before[0].expand(len(spans), -1, -1, -1), k], dim=2)
        v = torch.cat([before[1].expand(len(spans), -1, -1, -1), v], dim=2)
        mask = torch.ones(longest, seen + longest, dtype=torch.bool, device=query.device).tril(seen)[None, None]
    return _sdpa(module, q, k, v, mask, dropout, scaling, kwargs)[real]


def plain_causal(config, seq_len: int) -> bool:
    """True when every layer attends causally to all earlier tokens of a `seq_len` sequence with
    plain softmax: no logit soft-capping (Gemma 2) and no sliding window shorter than seq_len."""
    if getattr(config, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and all(t == "full_attention" for t in layer_types):
        return True
    window = getattr(config, "sliding_window", None)
    return not window or window >= seq_len


def enable(model, seq_len: int) -> str | None:
    """Switch `model` to segment attention; returns the implementation to restore, or None when
    the model cannot use it (it keeps its own)."""
    global _registered
    import torch
    from transformers import AttentionInterface

    if not plain_causal(getattr(model, "config", None), seq_len):
        return None
    if not _registered:
        # a graph break under torch.compile: the loop over segments depends on the batch
        AttentionInterface.register(NAME, torch.compiler.disable(attention))
        _registered = True
    before = model.config._attn_implementation
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, NotImplementedError):
        return None
    return before


def disable(model, before: str) -> None:
    """Give `model` (or the model inside a PEFT wrapper) its attention implementation `before` back."""
    getattr(model, "get_base_model", lambda: model)().set_attn_implementation(before)


def flatten(examples: Sequence[Example]) -> tuple[dict, "object"]:
    """(model inputs, targets) for `examples` without padding.

    Examples of one length with no inner segments (pretraining windows) stay one row each;
    otherwise they are laid end to end in one row. The inputs carry position ids (restarting in
    every segment), the segment bounds shared by the rows and a boolean mask of the positions
    whose next token has a label (`logits_to_keep`); targets are those labels, row by row. The
    first token of a segment is never a target: nothing of its own precedes it."""
    import torch

    def positions(e: Example) -> np.ndarray:
        return e.position_ids if e.position_ids is not None else np.arange(len(e.input_ids))

    whole = all(not (positions(e)[1:] == 0).any() for e in examples)
    rows = [[e] for e in examples] if whole and len({len(e.input_ids) for e in examples}) == 1 else [examples]
    ids, pos, labels = (np.stack([np.concatenate([f(e) for e in row]) for row in rows])
                        for f in (lambda e: e.input_ids, positions, lambda e: e.labels))
    starts = np.flatnonzero(pos[0] == 0)
    nxt = np.full_like(labels, IGNORE)
    nxt[:, :-1] = labels[:, 1:]
    nxt[:, starts[1:] - 1] = IGNORE
    keep = nxt != IGNORE
    inputs = {"input_ids": torch.from_numpy(ids.astype(np.int64)),
              "position_ids": torch.from_numpy(pos.astype(np.int64)),
              "logits_to_keep": torch.from_numpy(keep),
              "pmcllama_segments": [int(s) for s in starts] + [ids.shape[1]]}
    return inputs, torch.from_numpy(nxt[keep].astype(np.int64))


def loss(model, examples: Sequence[Example], n_items: int, device):
    """Summed token cross-entropy of `examples` divided by `n_items` (as HF's num_items_in_batch)."""
    import torch.nn.functional as F

    inputs, targets = flatten(examples)
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    logits = model(**inputs, use_cache=False).logits.float()  # (targets, vocab): the mask flattens
    return F.cross_entropy(logits, targets.to(device), reduction="sum") / n_items
