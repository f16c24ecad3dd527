"""One batched generation engine: `generate`, evaluation by generation, the server and chat.

Requests join and leave between decoding steps (step-wise continuous batching). Each step
first admits waiting requests -- their prompts are prefilled together, left-padded, and their
KV caches are laid beside the running batch's (padding on the left, so every row's next token
sits in the last column) -- then decodes one token for every running row in one forward.
Rows that finish (EOS, a stop string, `max_tokens`, a cancel) leave the batch at once and
columns that only pad every remaining row are cut.

A request with `n > 1` (self-consistency samples) is prefilled once and its cache copied to
`n` rows. Prompts admitted together that begin with the same tokens (a chat template's system
prompt, the same few-shot examples) have that prefix computed once, in a forward of its own,
and its cache copied to every row; each prompt's rest follows in one batched forward, padded
on the left of the rest (`SHARED_PREFIX_MIN` tokens or more are shared). The engine remembers
the caches of such prefixes and of prompts prefilled alone, the most recent first within
`remember_bytes`, and reuses the one that covers most of a later prompt: the next request with
the same system prompt, the next turn of any of several conversations (whose prompt begins
with the previous one).

Sampling is per row: greedy when `temperature` is 0, else temperature and top-p
with the request's own generator, seeded from `seed` (sample i uses `seed + i`), so the same
seed gives the same text whatever else is in the batch (up to float rounding of padding).

Text is decoded from all tokens of a row each step; a suffix that could still grow into a
stop string, or ends in an incomplete UTF-8 character, is held back until it is decided, so
streamed deltas concatenate to the final text and a stop string is never shown.
"""
from __future__ import annotations

import inspect
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

FINISH_STOP, FINISH_LENGTH, FINISH_CANCEL, FINISH_ERROR = "stop", "length", "cancelled", "error"
SHARED_PREFIX_MIN = 8  # tokens: a shorter common prefix is not worth a forward of its own
REMEMBER_BYTES = 256 << 20  # the remembered prefixes' caches, the newest kept whatever its size


@dataclass
class Request:
    """What to generate. `on_delta(index, text)` receives streamed text of sample `index`,
    `on_finish(index, reason)` its end; `on_done(request)` is called once when every sample
    has finished. The callbacks run on the engine's thread: keep them short."""

    prompt_ids: list[int]
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[str] = ()
    n: int = 1
    repetition_penalty: float = 1.0
    on_delta: Callable[[int, str], None] | None = None
    on_finish: Callable[[int, str], None] | None = None
    on_done: Callable[["Request"], None] | None = None
    # results, one per sample
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    cancelled: bool = False
    created: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    def cancel(self) -> None:
        """Stop generating for this request (a client went away); its rows leave the batch."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return len(self.finish_reasons) == self.n and all(r is not None for r in self.finish_reasons)


@dataclass
class _Row:
    req: Request
    index: int
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    shown: int = 0  # characters of the decoded text already sent


def hold_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` must wait: the longest suffix that is a
    proper prefix of a stop string, or an undecoded (U+FFFD) tail."""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:k]):
                keep = k
                break
    if text.endswith("\ufffd"):
        keep = max(keep, len(text) - len(text.rstrip("\ufffd")))
    return keep


class Engine:
    """Batched generation over a Hugging Face causal LM (CPU or CUDA)."""

    def __init__(self, model, tokenizer, max_batch: int = 32, context: int | None = None,
                 decoder: bool = True, remember_bytes: int = REMEMBER_BYTES):
        from pmcllama.serve.decoder import Decoder

        self.model, self.tok, self.max_batch = model, tokenizer, max_batch
        self.device = next(model.parameters()).device
        self.context = context or getattr(model.config, "max_position_embeddings", None) or 2048
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {e for e in eos + [tokenizer.eos_token_id] if e is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos or {0})
        # transformers 5.2x names the KV cache `cache`; earlier versions `past_key_values`
        self.cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        # the LLaMA forward with few Python steps and a slab KV cache, where the model is one it runs
        self.decoder = Decoder(model, self.context) if decoder and Decoder.supports(model) else None
        self.pending: list[Request] = []
        self.rows: list[_Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # (rows, columns) 1 where a real token is cached
        self.cond = threading.Condition()
        self.calls: list[tuple[Callable[[], object], Future]] = []  # for the engine's thread (`call`)
        self.thread: threading.Thread | None = None
        self.stopping = False
        # prompts prefilled alone and prefixes a group shared, least recently used first: (tokens,
        # each layer's keys and values for one row), reused by prompts that begin with the same tokens
        self.remembered: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.remember_bytes = remember_bytes

    # ------------------------------------------------------------------ the public API

    def submit(self, req: Request) -> Request:
        if not req.prompt_ids:
            raise ValueError("the prompt has no tokens")
        if len(req.prompt_ids) + req.max_tokens > self.context:
            raise ValueError(f"prompt ({len(req.prompt_ids)} tokens) + max_tokens ({req.max_tokens}) "
                             f"exceeds the model's context of {self.context} tokens")
        req.texts, req.token_ids = [""] * req.n, [[] for _ in range(req.n)]
        req.finish_reasons = [None] * req.n
        with self.cond:
            self.pending.append(req)
            self.cond.notify()
        return req

    def generate(self, reqs: Sequence[Request]) -> list[Request]:
        """Run `reqs` to the end in this thread (no background thread needed)."""
        for r in reqs:
            self.submit(r)
        while self.step():
            pass
        return list(reqs)

    def start(self) -> None:
        """Serve submitted requests from a background thread until `stop()`."""
        self.thread = threading.Thread(target=self._loop, name="pmcllama-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    @property
    def load(self) -> int:
        """Requests waiting or running."""
        return len(self.pending) + len({id(r.req) for r in self.rows})

    def call(self, fn: Callable[[], object]) -> object:
        """`fn()` run on the engine's thread between two steps (here, when no thread runs), and
        its result. Everything that computes with the model goes through the one thread: a
        second thread computing with torch gets a second OpenMP team, and libgomp, seeing more
        threads than cores, stops spinning between parallel regions, which slows every
        decoding step (2x on 2 cores, measured with the prepacked layers)."""
        if self.thread is None or not self.thread.is_alive():
            return fn()
        done: Future = Future()
        with self.cond:
            if self.stopping:
                raise RuntimeError("the engine has stopped")
            self.calls.append((fn, done))
            self.cond.notify()
        return done.result()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.stopping or self.pending or self.rows or self.calls):
                    self.cond.wait()
                calls, self.calls = self.calls, []
            for fn, done in calls:
                try:
                    done.set_result(fn())
                except BaseException as e:  # handed to the caller, who raises it
                    done.set_exception(e)
            if self.stopping:
                with self.cond:  # a call that came after the drain above: refused, not left waiting
                    late, self.calls = self.calls, []
                for _, done in late:
                    done.set_exception(RuntimeError("the engine has stopped"))
                return
            if not (self.pending or self.rows):
                continue
            try:
                self.step()
            except Exception as e:  # a bug or an out-of-memory: fail what runs, keep serving
                self.fail_all(f"{type(e).__name__}: {e}")

    def cancel_all(self) -> int:
        """Cancel every waiting and running request (the server is shutting down); the engine
        ends them at its next step. Returns how many there were."""
        with self.cond:
            reqs = list({id(r.req): r.req for r in self.rows}.values()) + self.pending
            for req in reqs:
                req.cancel()
            self.cond.notify()
        return len(reqs)

    def fail_all(self, why: str) -> None:
        """End every running and waiting request with finish reason `error` (logged once)."""

        print(f"[engine] generation failed, {self.load} request(s) ended: {why}", file=sys.stderr)
        with self.cond:
            reqs = list({id(r.req): r.req for r in self.rows}.values()) + self.pending
            self.pending, self.rows, self.cache, self.mask, self.remembered = [], [], None, None, []
        for req in reqs:
            self._finish_all(req, FINISH_ERROR)

    # ------------------------------------------------------------------ one step

    @torch.inference_mode()
    def step(self) -> bool:
        """Admit waiting requests, decode one token for every row; False when idle."""
        self._drop_finished()
        with self.cond:
            room = self.max_batch - len(self.rows)
            admit, taken = [], 0
            for r in list(self.pending):
                if r.cancelled:
                    self.pending.remove(r)
                    self._finish_all(r, FINISH_CANCEL)
                elif taken + r.n <= room or (not self.rows and not admit):
                    admit.append(r)
                    taken += r.n
                    self.pending.remove(r)
        if admit:
            self._prefill(admit)
        elif self.rows:
            self._decode()
        self._drop_finished()
        return bool(self.rows or self.pending)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        if self.decoder is not None:
            return self.decoder(ids.to(self.device), mask.to(self.device), positions.to(self.device), cache)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True, logits_to_keep=1,
                         **{self.cache_kw: cache})
        return out.logits[:, -1, :].float(), getattr(out, self.cache_kw)

    def _new_cache(self):
        if self.decoder is not None:
            return self.decoder.new_cache()
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _prefill(self, reqs: list[Request]) -> None:
        cache = self._new_cache()
        prompts = [r.prompt_ids for r in reqs]
        shared, (known, entry) = shared_prefix(prompts), self._known_prefix(prompts)
        if known >= max(shared, SHARED_PREFIX_MIN):  # computed by an earlier prefill: its cache reused
            shared = known
            self.remembered = [e for e in self.remembered if e is not entry] + [entry]  # the most recently used
            for layer, (k, v) in enumerate(entry[1]):
                cache.update(k[:, :, :shared].expand(len(reqs), -1, -1, -1).contiguous(),
                             v[:, :, :shared].expand(len(reqs), -1, -1, -1).contiguous(), layer)
        elif shared:  # computed once, its cache copied to every row
            ids = torch.tensor([prompts[0][:shared]])
            _, cache = self._forward(ids, torch.ones_like(ids), torch.arange(shared)[None], cache)
            self._remember(prompts[0][:shared], cache)
            cache.batch_select_indices(torch.zeros(len(reqs), dtype=torch.long, device=self.device))
        width = max(len(r.prompt_ids) for r in reqs) - shared
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        rest = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            tail = r.prompt_ids[shared:]
            ids[i, width - len(tail):] = torch.tensor(tail)
            rest[i, width - len(tail):] = 1
        mask = torch.cat([torch.ones((len(reqs), shared), dtype=torch.long), rest], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits, cache = self._forward(ids, mask, positions, cache)
        if len(reqs) == 1:  # its whole prompt, for a next turn of the conversation
            self._remember(prompts[0], cache)
        copies = torch.tensor([i for i, r in enumerate(reqs) for _ in range(r.n)])
        cache.batch_select_indices(copies.to(self.device))
        rows = [_Row(r, k, self._generator(r, k), r.token_ids[k]) for r in reqs for k in range(r.n)]
        self._join(rows, cache, mask[copies])
        self._sample(rows, logits[copies])

    def _known_prefix(self, prompts: list[list[int]]):
        """(how many leading tokens of every prompt a remembered cache holds, that entry): the
        entry that holds the most; each prompt keeps at least its last token to compute."""
        best, entry = 0, None
        for e in self.remembered:
            n = _common(e[0], prompts)
            if n > best:
                best, entry = n, e
        return best, entry

    def _remember(self, tokens: list[int], cache) -> None:
        """Keep a copy of one row's cache of `tokens` as the most recent entry (a copy: a view
        would keep the whole slab alive, spare columns included, and `remember_bytes` would not
        count them). An entry whose tokens begin the new one is dropped (it holds nothing more),
        and the least recently used go while all together exceed `remember_bytes`."""
        tokens = list(tokens)
        kept = [e for e in self.remembered if e[0] != tokens[:len(e[0])]]
        kept.append((tokens, [(layer.keys[:1].clone(), layer.values[:1].clone()) for layer in cache.layers]))
        size = [sum(k.nbytes + v.nbytes for k, v in e[1]) for e in kept]
        while len(kept) > 1 and sum(size) > self.remember_bytes:
            kept.pop(0)
            size.pop(0)
        self.remembered = kept

    def _decode(self) -> None:
        last = torch.tensor([[row.ids[-1]] for row in self.rows], dtype=torch.long)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits, self.cache = self._forward(last, self.mask, positions, self.cache)
        self._sample(self.rows, logits)

    # ------------------------------------------------------------------ batch bookkeeping

    def _join(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Lay a prefilled group's cache beside the running batch's, padded on the left."""
        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
            return
        width = max(mask.shape[1], self.mask.shape[1])
        for new, old in zip(cache.layers, self.cache.layers):  # both read before either is set
            old.keys, old.values = [torch.cat([_pad_left(getattr(old, name), width), _pad_left(getattr(new, name), width)])
                                    for name in ("keys", "values")]
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(mask, width, dim=1)], dim=0)
        self.rows = self.rows + rows

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.rows)
                if row.req.finish_reasons[row.index] is None and not row.req.cancelled]
        for row in self.rows:
            if row.req.cancelled and row.req.finish_reasons[row.index] is None:
                self._finish(row, FINISH_CANCEL)
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep)
        self.cache.batch_select_indices(index.to(self.device))
        self.mask = self.mask[index]
        pad = int((self.mask.cumsum(-1) == 0).sum(-1).min())  # columns that only pad
        if pad:
            self.mask = self.mask[:, pad:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, pad:], layer.values[:, :, pad:]

    # ------------------------------------------------------------------ tokens and text

    def _generator(self, req: Request, k: int) -> torch.Generator | None:
        if req.temperature <= 0:
            return None
        return torch.Generator().manual_seed(int(req.seed) + k)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        logits = logits.cpu()
        best = logits.argmax(-1).tolist()  # every row's greedy token, in one operation
        for row, scores, token in zip(rows, logits, best):
            req = row.req
            if req.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(req.prompt_ids) | set(row.ids)))
                vals = scores[seen]
                scores[seen] = torch.where(vals > 0, vals / req.repetition_penalty, vals * req.repetition_penalty)
                token = int(scores.argmax())
            if row.generator is not None:
                token = _sample_top_p(scores, req.temperature, req.top_p, row.generator)
            if req.first_token_at is None:
                req.first_token_at = time.monotonic()
            row.ids.append(token)
            self._advance(row, token)

    def _advance(self, row: _Row, token: int) -> None:
        req = row.req
        done = token in self.eos
        ids = row.ids[:-1] if done else row.ids
        text = self.tok.decode(ids, skip_special_tokens=True)
        reason = FINISH_STOP if done else None
        for stop in req.stop:
            at = text.find(stop, max(0, row.shown - len(stop)))
            if stop and at >= 0:
                text, reason = text[:at], FINISH_STOP
        if reason is None and len(row.ids) >= req.max_tokens:
            reason = FINISH_LENGTH
        upto = len(text) if reason else len(text) - hold_back(text, req.stop)
        if upto > row.shown:
            if req.on_delta is not None:
                req.on_delta(row.index, text[row.shown:upto])
            row.shown = upto
        req.texts[row.index] = text[:upto]
        if reason:
            self._finish(row, reason)

    def _finish(self, row: _Row, reason: str) -> None:
        req = row.req
        req.finish_reasons[row.index] = reason
        if req.on_finish is not None:
            req.on_finish(row.index, reason)
        if req.done and req.on_done is not None:
            req.on_done(req)

    def _finish_all(self, req: Request, reason: str) -> None:
        for i, r in enumerate(req.finish_reasons):
            if r is None:
                req.finish_reasons[i] = reason
                if req.on_finish is not None:
                    req.on_finish(i, reason)
        if req.on_done is not None:
            req.on_done(req)


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt of a group of two or more shares, leaving each at
    least its last token to compute; 0 when that is under `SHARED_PREFIX_MIN`."""
    if len(prompts) < 2:
        return 0
    n = _common(prompts[0], prompts)
    return n if n >= SHARED_PREFIX_MIN else 0


def _common(tokens: Sequence[int], prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens of `tokens` every prompt begins with, at most all but its last."""
    n = min(len(tokens), *(len(p) - 1 for p in prompts))
    for p in prompts:
        n = next((i for i in range(n) if p[i] != tokens[i]), n)
    return n


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def _sample_top_p(scores: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
