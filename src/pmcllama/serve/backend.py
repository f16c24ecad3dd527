"""The model behind the server: tokenizer, chat template, the engine thread, log-probs.

A `Job` is one prompt of one HTTP request, bridged from the engine's thread to the server's
event loop: text deltas and finish reasons arrive on an asyncio queue.
"""
from __future__ import annotations

import asyncio
import math
import os

import torch

from pmcllama.serve.api import ApiError
from pmcllama.serve.engine import FINISH_CANCEL, FINISH_LENGTH, REMEMBER_BYTES, Engine, Request

DEFAULT_MAX_TOKENS = 256


class Job:
    def __init__(self, engine: Engine, req: Request):
        self.engine, self.request, self.prompt_ids = engine, req, req.prompt_ids
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.finished = asyncio.Event()
        req.on_delta = lambda i, text: self._put((i, text, None))
        req.on_finish = lambda i, reason: self._put((i, "", reason))
        req.on_done = lambda _: self.loop.call_soon_threadsafe(self.finished.set)

    def _put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def start(self) -> "Job":
        if self.request.max_tokens == 0:  # echo-only scoring: nothing to generate
            self.request.texts, self.request.token_ids = [""] * self.request.n, [[] for _ in range(self.request.n)]
            self.request.finish_reasons = [FINISH_LENGTH] * self.request.n
            self.finished.set()
            for i in range(self.request.n):
                self.queue.put_nowait((i, "", FINISH_LENGTH))
            return self
        self.engine.submit(self.request)
        return self

    async def wait(self) -> None:
        await self.finished.wait()

    async def events(self):
        """(sample index, text, finish reason or None) until every sample has finished."""
        left = self.request.n
        while left:
            i, text, reason = await self.queue.get()
            yield i, text, reason
            left -= reason is not None

    def cancel(self) -> None:
        if not self.request.done:
            self.request.cancel()
            with self.engine.cond:
                self.engine.cond.notify()

    def text(self, i: int) -> str:
        return self.request.texts[i]

    def finish_reason(self, i: int) -> str:
        reason = self.request.finish_reasons[i]
        return "stop" if reason == FINISH_CANCEL else reason

    @property
    def completion_tokens(self) -> int:
        return sum(len(ids) for ids in self.request.token_ids)


class Backend:
    """A transformers model and its engine, running on a background thread."""

    def __init__(self, model, tokenizer, max_batch: int = 32, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 remember_bytes: int = REMEMBER_BYTES):
        self.model, self.tok = model, tokenizer
        self.engine = Engine(model, tokenizer, max_batch=max_batch, remember_bytes=remember_bytes)
        self.context, self.vocab = self.engine.context, len(tokenizer)
        self.default_max_tokens = default_max_tokens

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    def cancel_all(self) -> int:
        """End every answer in progress (Ctrl-C): waiting clients get a 503, streams an error event."""
        return self.engine.cancel_all()

    @property
    def load(self) -> int:
        return self.engine.load

    def chat_ids(self, messages: list[dict]) -> list[int]:
        if not self.tok.chat_template:
            raise ApiError(400, "this model has no chat template; use /v1/completions", "messages")
        try:
            enc = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)
        except Exception as e:  # the template refused the conversation (e.g. role order)
            raise ApiError(400, f"the model's chat template refused the messages: {e}", "messages") from None
        return list(enc["input_ids"])

    def text_ids(self, text: str) -> list[int]:
        return list(self.tok(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def job(self, prompt_ids: list[int], req) -> Job:
        room = self.context - len(prompt_ids)
        if room < 1:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                           f"{self.context}", "messages" if hasattr(req, "messages") else "prompt",
                           "context_length_exceeded")
        limit = req.limit
        if limit is not None and limit > room:
            raise ApiError(400, f"max_tokens={limit} plus the prompt's {len(prompt_ids)} tokens exceeds "
                           f"this model's context of {self.context}", "max_tokens", "context_length_exceeded")
        max_tokens = min(self.default_max_tokens, room) if limit is None else limit
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little")
        request = Request(list(prompt_ids), max_tokens=max_tokens, temperature=req.temperature,
                          top_p=req.top_p, seed=seed, stop=req.stop, n=req.n)
        return Job(self.engine, request).start()

    @torch.inference_mode()
    def _log_softmax(self, ids: list[int]) -> torch.Tensor:
        """(len(ids), vocab) log-probabilities of the next token after each of `ids`."""
        logits = self.model(input_ids=torch.tensor([ids], device=self.engine.device)).logits[0].float()
        return torch.log_softmax(logits, dim=-1).cpu()

    def logprobs(self, job: Job, i: int, k: int, echo: bool) -> dict:
        """OpenAI's completions `logprobs` object for sample `i`: the prompt's tokens (with
        `echo`) and the generated ones, each with its log-probability and the top `k`."""
        prompt, gen = job.prompt_ids, job.request.token_ids[i]
        ids = list(prompt) + list(gen)
        logp = self.engine.call(lambda: self._log_softmax(ids))
        first = 0 if echo else len(prompt)
        tokens, token_lp, top, offsets, pos = [], [], [], [], 0
        for t in range(first, len(ids)):
            piece = self.tok.decode([ids[t]])
            tokens.append(piece)
            offsets.append(pos)
            pos += len(piece)
            if t == 0:
                token_lp.append(None)
                top.append(None)
                continue
            row = logp[t - 1]
            token_lp.append(_finite(row[ids[t]]))
            best = row.topk(max(k, 1)) if k else None
            top.append({self.tok.decode([int(j)]): _finite(v) for v, j in zip(*best)} if best else {})
        return {"tokens": tokens, "token_logprobs": token_lp, "top_logprobs": top, "text_offset": offsets}


def _finite(v) -> float:
    x = float(v)
    return x if math.isfinite(x) else -1e30
