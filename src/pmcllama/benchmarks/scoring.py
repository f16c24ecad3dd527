"""Multiple-choice scoring by log-likelihood, computed the lm-evaluation-harness way.

For each item and choice, loglik = sum of log p(continuation token | everything before),
with the split of lm-eval's `HFLM._encode_pair`:

- trailing whitespace of the prompt moves to the front of the continuation;
- `whole = encode(prompt + continuation)`, `ctx = encode(prompt)`,
  continuation tokens = `whole[len(ctx):]`;
- the model input is `(ctx + cont)[:-1]`, cut from the left to `max_length` tokens
  (lm-eval's `[-(max_length + 1):][:-1]`); such items are counted as truncated.

Texts are encoded without special tokens, then any prefix the tokenizer adds by default (a
BOS, e.g. Llama's `<s>`) is put in front of both, so the split stays consistent. lm-eval's HF
backend adds no BOS unless `add_bos_token=True`: for tokenizers that add one (not SmolLM2 nor
tiny-llama), numbers match lm-eval run with `add_bos_token=True`. An empty context is
replaced by the EOS token, as lm-eval's `prefix_token_id`.

Batching: questions, longest first, fill each forward up to `max_batch_tokens` model-input
tokens (at most `batch_size` questions when it is set). Models that take the segment
attention of `training/varlen.py` are scored padding-free by `benchmarks.packed`: the
questions of a batch laid end to end in one row, each attending to itself only, a question's
prompt computed once for all its choices, and a prefix common to every prompt (fixed few-shot
examples) computed once for the whole run. Other models get the sequences right-padded into
one forward, without an attention mask (causal attention never lets a real token see the pads
after it). Requests whose model input is identical share one row, so single-token choices
(" A".." D") cost one sequence per question, like lm-eval's grouping by context. Only the
hidden states at continuation positions go through the output layer, and log_softmax is
computed in fp32 (`precision="bf16"` autocasts the transformer only); choices of one token
share their prompt's last position, which goes through it once. In a LLaMA-architecture model
the last layer runs its attention over every token (the keys and values of the layers before
need them all) but its MLP only at those positions (`_last_layer_at`): nothing after it
reads the others.
`acc` takes the argmax of summed logliks, `acc_norm` of loglik / len(choice text in
characters, without the leading delimiter space), as lm-eval's `acc_norm`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

from pmcllama.benchmarks.base import Item
from pmcllama.errors import UserError

DEFAULT_CONTEXT = 2048
DEFAULT_BATCH_TOKENS = 2048  # model-input tokens per forward (CPU: cache-sized activations)


@dataclass
class Request:
    """One (item, choice) to score: the model input and the continuation tokens it predicts."""

    inp: tuple[int, ...]
    cont: list[int]
    truncated: bool


def special_prefix(tokenizer) -> list[int]:
    """Token ids a tokenizer puts before the text by default (e.g. BOS); [] for most BPEs."""
    with_sp = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    for i in range(len(with_sp) - len(plain) + 1):
        if with_sp[i:i + len(plain)] == plain:
            return list(with_sp[:i])
    return []


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval: trailing spaces of the context belong to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def choice_chars(choice: str) -> int:
    """Length used by acc_norm: the choice text without the target delimiter space."""
    return max(1, len(choice[1:] if choice.startswith(" ") else choice))


def context_length(model, tokenizer=None) -> int:
    """The model's context window (max_position_embeddings), else the tokenizer's, else 2048."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not n and tokenizer is not None and 0 < (tokenizer.model_max_length or 0) < 10**7:
        n = tokenizer.model_max_length
    return int(n or DEFAULT_CONTEXT)


def build_requests(tokenizer, items: Sequence[Item], max_length: int) -> list[list[Request]]:
    """Encode every item's choices into requests (one list per item)."""
    prefix = special_prefix(tokenizer)
    fallback = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [0]
    pairs = [[split_whitespace(it.prompt, c) for c in it.choices] for it in items]
    ctx_texts = list(dict.fromkeys(p[0] for ps in pairs for p in ps))  # a prompt once for all its choices
    whole_texts = [c + k for ps in pairs for c, k in ps]
    enc = tokenizer(ctx_texts + whole_texts, add_special_tokens=False, verbose=False)["input_ids"]
    ctx_enc, whole_enc = dict(zip(ctx_texts, enc[: len(ctx_texts)])), enc[len(ctx_texts):]
    out, k = [], 0
    for it, ps in zip(items, pairs):
        reqs = []
        for context, _ in ps:
            ctx = prefix + list(ctx_enc[context])
            cont = list(whole_enc[k])[len(ctx) - len(prefix):]
            k += 1
            if not cont:
                raise UserError(f"item {it.id}: a choice encodes to no tokens after the prompt")
            if len(cont) > max_length:
                raise UserError(f"item {it.id}: a choice is longer than max_length={max_length} tokens")
            seq = (ctx or fallback) + cont
            inp = seq[:-1]
            reqs.append(Request(tuple(inp[-max_length:]), cont, len(inp) > max_length))
        out.append(reqs)
    return out


def _decoder_and_head(model) -> tuple[Any, Any]:
    """The transformer body and output layer, or (None, None) to use the full forward."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None, None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, None
    if decoder is None or head is None or decoder is model:
        return None, None
    return decoder, head


def _autocast(device, precision: str):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def continuation_sums(logits, requests: Sequence[Request], rows) -> list[float]:
    """Summed fp32 log-probs of each request's continuation from its logits: row `rows[i]` of
    them for the i-th of the continuations' tokens, in order (`_logits_at`'s index)."""
    import torch

    targets = torch.tensor([t for r in requests for t in r.cont], device=logits.device)
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok_lp = logp[rows, targets]
    return [float(s.sum()) for s in torch.split(tok_lp.double(), [len(r.cont) for r in requests])]


def score_requests(model, requests: Sequence[Request], pad_id: int = 0, precision: str = "fp32") -> list[float]:
    """Summed log-probs of each request's continuation, with one right-padded forward."""
    import torch

    device = next(model.parameters()).device
    rows: dict[tuple[int, ...], int] = {}
    for r in requests:
        rows.setdefault(r.inp, len(rows))
    width = max(len(inp) for inp in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for inp, i in rows.items():
        ids[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
    row_idx, pos_idx = [], []
    for r in requests:
        row, start = rows[r.inp], len(r.inp) - len(r.cont)
        row_idx += [row] * len(r.cont)
        pos_idx += range(start, start + len(r.cont))
    row_t, pos_t = torch.tensor(row_idx, device=device), torch.tensor(pos_idx, device=device)
    logits, at = _logits_at(model, ids.to(device), row_t, pos_t, precision)
    return continuation_sums(logits, requests, at)


@contextlib.contextmanager
def _last_layer_at(decoder, where):
    """Within: the last layer of a LLaMA decoder (`prepack.DECODER_LAYERS`) runs its residual
    stream and MLP only at the hidden states `where` (an index of them, e.g. (rows,
    positions)), so the decoder's output is those states alone, in that order; its attention
    and MLP modules run as they are (`pmcllama.prepack`'s routes included), and the layer's own
    forward is back after. Yields a list, not empty once it did; a layer with any other
    instance forward (a hook of another library) is left alone, and a call that passes more
    than the hidden states by position runs the whole layer."""
    import torch

    from pmcllama.prepack import DECODER_LAYERS, _decoder_forward

    layers = getattr(decoder, "layers", None)
    last = layers[-1] if isinstance(layers, torch.nn.ModuleList) and len(layers) else None
    own = vars(last).get("forward") if last is not None else None  # prepack's, or None
    if (type(decoder).__name__ != "LlamaModel" or type(last).__name__ not in DECODER_LAYERS
            or (own is not None and getattr(own, "__func__", None) is not _decoder_forward)):
        yield []
        return
    pruned = []

    def forward(hidden_states, *args, **kwargs):
        if args:
            return (own or type(last).forward.__get__(last))(hidden_states, *args, **kwargs)
        attn, _ = last.self_attn(hidden_states=last.input_layernorm(hidden_states), **kwargs)
        h = hidden_states[where] + attn[where]
        pruned.append(True)
        return h + last.mlp(last.post_attention_layernorm(h))

    last.forward = forward
    try:
        yield pruned
    finally:
        if own is None:
            del last.forward
        else:
            last.forward = own


def _logits_at(model, ids, row_t, pos_t, precision: str, **extra):
    """(logits, index): the logits (U, vocab) at the distinct (row, position) pairs of `row_t`,
    `pos_t`, the output layer run outside autocast, and for each pair its row of them. Choices
    of one token share their prompt's last position: the output layer and its log-softmax run
    once there, not once per choice.

    Padded rows get no attention mask: they are right-padded and attention is causal, so a
    real token never sees a pad (pads only come after it), and the position ids 0..n-1 are
    right. The plain causal path is the fast SDPA kernel; a padding mask would force the slow
    one. `extra` goes to the forward (the flattened rows of `benchmarks.packed`)."""
    import torch

    decoder, head = _decoder_and_head(model)
    pairs, index = torch.unique(row_t * ids.shape[1] + pos_t, return_inverse=True)
    row_t, pos_t = pairs // ids.shape[1], pairs % ids.shape[1]
    with torch.inference_mode():
        if decoder is None:
            with _autocast(ids.device, precision):
                return model(input_ids=ids, use_cache=False, **extra).logits[row_t, pos_t].float(), index
        with _autocast(ids.device, precision), _last_layer_at(decoder, (row_t, pos_t)) as pruned:
            out = decoder(input_ids=ids, use_cache=False, **extra)
        h = out[0] if pruned else out[0][row_t, pos_t]
        # a prepacked output layer (`pmcllama.prepack`) keeps no `weight`: it is fp32
        return head(h.to(head.weight.dtype if hasattr(head, "weight") else torch.float32)).float(), index


def predict(item: Item, logliks: list[float], truncated: bool) -> dict:
    """The per-item record: predictions by acc and acc_norm, correctness, logliks."""
    normed = [ll / choice_chars(c) for ll, c in zip(logliks, item.choices)]
    pred = max(range(len(logliks)), key=lambda j: (logliks[j], -j))
    pred_norm = max(range(len(normed)), key=lambda j: (normed[j], -j))
    return {
        "id": item.id, "gold": item.gold, "pred": pred, "pred_norm": pred_norm,
        "correct": pred == item.gold, "correct_norm": pred_norm == item.gold,
        "loglik": logliks, "truncated": truncated, "prompt_sha256": item.prompt_sha256,
    }


def evaluate_items(
    model,
    tokenizer,
    items: Sequence[Item],
    batch_size: int | None = None,
    precision: str = "fp32",
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "scoring",
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    share_prefix: bool = True,
) -> list[dict]:
    """Score every item in token-budget batches; records in input order.

    `max_batch_tokens`: model-input tokens per forward (a longer question goes alone);
    `batch_size`: at most this many questions per forward (None: no limit);
    `share_prefix`: compute a token prefix common to every prompt once (padding-free path)."""
    from pmcllama.benchmarks import packed
    from pmcllama.prepack import keep_freed_memory
    from pmcllama.progress import progress as progress_bar
    from pmcllama.training import varlen

    if precision not in ("fp32", "bf16"):
        raise UserError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    if next(model.parameters()).device.type == "cpu":
        keep_freed_memory()  # activations allocated afresh each forward: no page faults for them
    max_length = max_length or context_length(model, tokenizer)
    requests = build_requests(tokenizer, items, max_length)
    was_training = model.training
    model.eval()
    before = varlen.enable(model, max_length)
    try:
        with progress_bar(total=len(items), unit="q", desc=desc, disable=not progress) as bar:
            if before is not None:
                logliks = packed.score_all(model, requests, max_batch_tokens, batch_size, precision,
                                           share_prefix, bar)
            else:
                pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                logliks = _score_padded(model, requests, max_batch_tokens, batch_size, pad_id, precision, bar)
    finally:
        if before is not None:
            varlen.disable(model, before)
        model.train(was_training)
    return [predict(it, ll, any(r.truncated for r in reqs))
            for it, ll, reqs in zip(items, logliks, requests)]


def _score_padded(model, requests, max_batch_tokens, batch_size, pad_id, precision, bar) -> list[list[float]]:
    """Models without segment attention: right-padded batches (rows x longest row <= budget)."""
    from pmcllama.benchmarks.packed import plan

    widths = [max(len(r.inp) for r in reqs) * len({r.inp for r in reqs}) for reqs in requests]
    logliks: list[list[float]] = [[] for _ in requests]
    for chunk in plan(widths, max_batch_tokens, batch_size):
        flat = [r for i in chunk for r in requests[i]]
        values = iter(score_requests(model, flat, pad_id, precision))
        for i in chunk:
            logliks[i] = [next(values) for _ in requests[i]]
        bar.update(len(chunk))
    return logliks
