"""The llama.cpp backend for `.gguf` models: llama.cpp's own server library (the prebuilt
`xllamacpp` wheel, `pip install xllamacpp` or `pip install pmcllama[llamacpp]`) called in
process, behind the same routes, checks, key, limits and page as the transformers backend.

Requests that pass pmcllama's checks are handed to llama.cpp's chat/completions handlers as
they came (with pmcllama's default `max_tokens`), and the answers are passed back with the
served model name. llama.cpp decodes up to `max_batch` requests at once in parallel slots of
`context` tokens each; a streamed request whose client goes away is cancelled at the next
token. Not available here: `echo` and OpenAI's legacy `logprobs` on /v1/completions (llama.cpp
reports log-probs in its own layout).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from pathlib import Path
from typing import Any, AsyncIterator

from pmcllama.errors import UserError
from pmcllama.serve.api import ApiError

_DONE = object()


def available() -> bool:
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppBackend:
    """A GGUF file served by llama.cpp (xllamacpp)."""

    proxy = True

    def __init__(self, gguf: str | Path, context: int = 2048, max_batch: int = 8,
                 default_max_tokens: int = 256, threads: int | None = None):
        if not available():
            raise UserError("the llama.cpp backend needs the xllamacpp package: pip install xllamacpp "
                            "(or serve the model with backend=transformers)")
        import xllamacpp as xlc

        params = xlc.CommonParams()
        params.model.path = str(gguf)
        params.n_parallel = max_batch
        params.n_ctx = context * max_batch  # llama.cpp splits it into one slot per parallel request
        n = threads or min(os.cpu_count() or 1, 8)
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = n
        # xllamacpp also opens llama.cpp's own HTTP server on a loopback port; lock that side door
        # with a key nobody is told (pmcllama calls the handlers in process)
        params.api_keys = [secrets.token_urlsafe(32)]
        try:
            self.server = xlc.Server(params)
        except Exception as e:  # noqa: BLE001 - llama.cpp's own message names the problem
            raise UserError(f"llama.cpp could not load the model: {e}", gguf) from None
        self.context, self.default_max_tokens = context, default_max_tokens
        self.inflight, self.lock = 0, threading.Lock()
        self.closing = threading.Event()  # set by cancel_all: streams stop at their next token

    def start(self) -> None:  # llama.cpp runs its own threads
        pass

    def stop(self) -> None:
        self.server = None

    def cancel_all(self) -> int:
        """Stop every stream at its next token (Ctrl-C); a non-stream answer runs to its end
        (llama.cpp's call cannot be interrupted; uvicorn's graceful timeout bounds the wait)."""
        self.closing.set()
        return self.inflight

    @property
    def load(self) -> int:
        return self.inflight

    def _body(self, data: dict, req) -> dict:
        body = {k: v for k, v in data.items() if k != "model"}
        if req.limit is not None and req.limit >= self.context:
            raise ApiError(400, f"max_tokens={req.limit} exceeds the context of {self.context} tokens per "
                           "request", "max_tokens", "context_length_exceeded")
        if req.limit is None:
            body["max_tokens"] = self.default_max_tokens
        return body

    async def answer(self, kind: str, data: dict, req) -> dict:
        handler = self._handler(kind, req)
        with self._counted():
            out = await asyncio.to_thread(handler, self._body(data, req))
        return _checked(out)

    async def chunks(self, kind: str, data: dict, req) -> AsyncIterator[dict]:
        """The streamed chunks of one request, as llama.cpp sends them."""
        handler = self._handler(kind, req)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()

        def push(chunk):  # llama.cpp's stream callback: a true return value cancels the request
            if gone.is_set() or self.closing.is_set():
                return True
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return None

        def work():
            try:
                with self._counted():
                    out = handler(self._body(data, req), push)
                if isinstance(out, dict) and "error" in out:
                    loop.call_soon_threadsafe(queue.put_nowait, out)
            except Exception as e:  # noqa: BLE001
                loop.call_soon_threadsafe(queue.put_nowait, {"error": {"message": str(e), "code": 500}})
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        threading.Thread(target=work, daemon=True).start()
        try:
            while (chunk := await queue.get()) is not _DONE:
                yield _checked(chunk)
        finally:  # the client went away: llama.cpp stops at its next token
            gone.set()

    @contextlib.contextmanager
    def _counted(self):
        """A request in flight, for the server's queue limit."""
        with self.lock:
            self.inflight += 1
        try:
            yield
        finally:
            with self.lock:
                self.inflight -= 1

    def _handler(self, kind: str, req):
        if kind == "completions" and (req.echo or req.logprobs is not None):
            raise ApiError(400, "echo and logprobs on /v1/completions need the transformers backend "
                           "(serve a Hugging Face folder, or backend=transformers)", "echo" if req.echo else "logprobs")
        if self.server is None:
            raise ApiError(503, "the server is shutting down", type="server_error")
        return self.server.handle_chat_completions if kind == "chat" else self.server.handle_completions


def _checked(out: Any) -> dict:
    """llama.cpp's answer, or its error as an OpenAI-shaped ApiError."""
    if not isinstance(out, dict):
        raise ApiError(500, "llama.cpp returned no answer", type="server_error")
    err = out.get("error")
    if err is None:
        return out
    status = err.get("code") if isinstance(err.get("code"), int) else 400
    kind = err.get("type") or "invalid_request_error"
    code = "context_length_exceeded" if kind == "exceed_context_size_error" else kind
    raise ApiError(status if 400 <= status < 600 else 400, str(err.get("message", "llama.cpp error")),
                   code=code, type="invalid_request_error" if status < 500 else "server_error")
