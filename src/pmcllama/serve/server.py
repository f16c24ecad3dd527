"""The OpenAI-compatible HTTP API over the generation engine, and the web chat page.

Routes: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`
(with `echo` and `logprobs`, so lm-evaluation-harness's `local-completions` model can score
log-likelihood tasks), `GET /` (the chat page). Every error is OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`: 400 bad body, 401 wrong key, 404 unknown
model or route, 413 body too large, 503 with `Retry-After` when the queue is full.
"""
from __future__ import annotations

import asyncio
import html
import json
import secrets
import time
import uuid
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from pmcllama.serve.api import ApiError, ChatRequest, CompletionRequest, validation_error
from pmcllama.serve.backend import Backend, Job
from pmcllama.serve.engine import FINISH_CANCEL, FINISH_ERROR

DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there
# finish reasons that end a stream with an error event: (message, code)
STREAM_ENDS = {FINISH_ERROR: ("generation failed on the server", "generation_failed"),
               FINISH_CANCEL: ("the server is shutting down", "shutting_down")}


def create_app(backend: Backend, model_name: str, api_key: str | None = None,
               max_body: int = 4 << 20, max_queue: int = 64) -> FastAPI:
    app = FastAPI(title="pmcllama", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    api = app.state.api = Api(backend, model_name, api_key, max_body, max_queue)
    for kind, handler in ((ApiError, _api_error), (HTTPException, _http_error),
                          (RequestValidationError, _validation), (Exception, _internal)):
        app.add_exception_handler(kind, handler)
    app.add_api_route("/", lambda: HTMLResponse(chat_page(model_name)), methods=["GET"])
    app.add_api_route("/favicon.ico", lambda: None, methods=["GET"], status_code=204)
    app.add_api_route("/health", lambda: {"status": "ok", "model": model_name, "load": backend.load,
                                          "requests": api.requests}, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    return app


async def _api_error(_, e: ApiError):
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _http_error(_, e: HTTPException):
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return JSONResponse(ApiError(e.status_code, str(e.detail), type=kind).body(), status_code=e.status_code)


async def _validation(_, e: RequestValidationError):
    return JSONResponse(ApiError(400, str(e.errors()[0].get("msg"))).body(), status_code=400)


async def _internal(_, e: Exception):  # a bug: still OpenAI's shape, and the server lives on
    return JSONResponse(ApiError(500, f"internal error: {type(e).__name__}", type="server_error").body(),
                        status_code=500)


class Api:
    """The OpenAI routes over one backend: key check, body limits, queue bound, answers and streams."""

    def __init__(self, backend: Backend, model_name: str, api_key: str | None, max_body: int, max_queue: int):
        self.backend, self.model_name, self.api_key = backend, model_name, api_key
        self.max_body, self.max_queue = max_body, max_queue
        self.requests = 0  # completion requests accepted (GET /health shows it)
        self.closing = False  # set by close(): new requests get 503, answers in progress end

    def close(self) -> None:
        """The server is shutting down (Ctrl-C): refuse new requests and end the running ones,
        so that uvicorn's wait for open requests is short."""
        self.closing = True
        self.backend.cancel_all()

    def check_key(self, request: HttpRequest) -> None:
        if self.api_key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                raise ApiError(401, "invalid API key (send Authorization: Bearer KEY)",
                               type="authentication_error", code="invalid_api_key")

    async def body_of(self, request: HttpRequest, cls):
        self.check_key(request)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_body:
                raise ApiError(413, f"request body larger than {self.max_body} bytes", code="body_too_large")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "request body is not UTF-8 text") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise ApiError(400, f"request body is not valid JSON: {getattr(e, 'msg', 'nested too deeply')}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object")
        try:
            req = cls.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from None
        if req.model not in (None, self.model_name):
            raise ApiError(404, f"model '{req.model}' does not exist; this server serves '{self.model_name}'",
                           "model", "model_not_found", type="not_found_error")
        req.unsupported()
        if self.closing:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        if self.backend.load >= self.max_queue:
            raise ApiError(503, "the server is busy: the request queue is full; retry shortly",
                           code="queue_full", type="server_error", headers={"Retry-After": "1"})
        self.requests += 1
        return req, data

    async def models(self, request: HttpRequest):
        self.check_key(request)
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "pmcllama"}]}

    async def chat(self, request: HttpRequest):
        req, data = await self.body_of(request, ChatRequest)
        if getattr(self.backend, "proxy", False):
            return await self.proxied(req, data, "chat")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                    for i, m in enumerate(req.messages)]
        return await self.respond(request, req, [self.backend.chat_ids(messages)], chat=True)

    async def completions(self, request: HttpRequest):
        req, data = await self.body_of(request, CompletionRequest)
        if getattr(self.backend, "proxy", False):
            return await self.proxied(req, data, "completions")
        backend = self.backend
        prompts = [backend.text_ids(p) if isinstance(p, str) else p for p in req.prompts()]
        if any(not p or not all(isinstance(t, int) and 0 <= t < backend.vocab for t in p) for p in prompts):
            raise ApiError(400, f"prompt token ids must be in [0, {backend.vocab})", "prompt")
        if req.stream and (req.echo or req.logprobs is not None):
            raise ApiError(400, "echo and logprobs are not supported with stream", "stream")
        return await self.respond(request, req, prompts, chat=False)

    async def proxied(self, req, data: dict, kind: str):
        """A backend that answers OpenAI requests itself (llama.cpp): its answers, our name."""
        if not req.stream:
            return {**await self.backend.answer(kind, data, req), "model": self.model_name}
        chunks = self.backend.chunks(kind, data, req).__aiter__()
        try:
            first = await chunks.__anext__()  # an error before any text is still an HTTP error
        except StopAsyncIteration:
            first = None

        async def events():
            try:
                if first is not None:
                    yield sse({**first, "model": self.model_name})
                    async for chunk in chunks:
                        yield sse({**chunk, "model": self.model_name})
            except ApiError as e:
                yield sse(e.body())
            yield "data: [DONE]\n\n"

        return event_stream(events())

    async def respond(self, request: HttpRequest, req, prompts: list[list[int]], chat: bool):
        jobs = [self.backend.job(ids, req) for ids in prompts]
        meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], "created": int(time.time()),
                "model": self.model_name, "object": "chat.completion" if chat else "text_completion"}
        if req.stream:
            return event_stream(stream(jobs, req, meta, chat))
        await until_answered(jobs, request)
        if any(j.request.cancelled for j in jobs):  # the client left, or Ctrl-C: nothing to answer
            raise ApiError(503, "the server is shutting down" if self.closing else "the request was cancelled",
                           type="server_error", code="shutting_down" if self.closing else "cancelled")
        if any(FINISH_ERROR in j.request.finish_reasons for j in jobs):
            raise ApiError(503, "generation failed on the server; retry", type="server_error",
                           code="generation_failed", headers={"Retry-After": "1"})
        choices = []
        for k, job in enumerate(jobs):
            for i in range(req.n):
                c = {"index": k * req.n + i, "finish_reason": job.finish_reason(i), "logprobs": None}
                if chat:
                    c["message"] = {"role": "assistant", "content": job.text(i)}
                else:
                    c["text"] = (self.backend.decode(job.prompt_ids) if req.echo else "") + job.text(i)
                    if req.logprobs is not None:
                        c["logprobs"] = await asyncio.to_thread(self.backend.logprobs, job, i, req.logprobs, req.echo)
                choices.append(c)
        return {**meta, "choices": choices, "usage": usage(jobs)}


async def until_answered(jobs: list[Job], request: HttpRequest) -> None:
    """Wait for every job of a non-streamed request; a client that goes away (which an answer
    not yet streamed does not notice by itself) cancels them, so its rows leave the batch."""
    waiting = asyncio.ensure_future(asyncio.gather(*(j.wait() for j in jobs)))
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if not waiting.done() and await request.is_disconnected():
                for j in jobs:
                    j.cancel()
    finally:  # also when this handler itself is cancelled
        if not waiting.done():
            for j in jobs:
                j.cancel()
            waiting.cancel()


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def stream(jobs: list[Job], req, meta: dict, chat: bool) -> AsyncIterator[str]:
    """Server-sent events of a streamed answer; the jobs stop when the client goes away."""
    base = {**meta, "object": "chat.completion.chunk" if chat else "text_completion"}
    try:
        if chat:
            for i in range(req.n):
                yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]})
        async for index, text, reason in merged(jobs, req.n):
            if reason in STREAM_ENDS:  # a failure, or Ctrl-C on the server
                message, code = STREAM_ENDS[reason]
                yield sse(ApiError(503, message, type="server_error", code=code).body())
                break
            if chat:
                c = {"index": index, "delta": {"content": text} if text else {}, "finish_reason": reason,
                     "logprobs": None}
            else:
                c = {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
            yield sse({**base, "choices": [c]})
        if req.stream_options and req.stream_options.include_usage:
            yield sse({**base, "choices": [], "usage": usage(jobs)})
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or we are done): stop generating
        for j in jobs:
            j.cancel()


async def merged(jobs: list[Job], n: int) -> AsyncIterator[tuple[int, str, str | None]]:
    """(choice index, text delta, finish reason or None) of every job as they come."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, job: Job):
        async for i, text, reason in job.events():
            await queue.put((k * n + i, text, reason))
        await queue.put(None)

    tasks = [asyncio.create_task(pump(k, j)) for k, j in enumerate(jobs)]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is None:
                left -= 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(jobs: list[Job]) -> dict[str, Any]:
    prompt = sum(len(j.prompt_ids) for j in jobs)
    completion = sum(j.completion_tokens for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_page(model_name: str) -> str:
    page = resources.files("pmcllama.serve").joinpath("chat.html").read_text(encoding="utf-8")
    return page.replace("{{MODEL}}", html.escape(model_name))
