"""The judge endpoint: any OpenAI-compatible chat server, through the official `openai` client.

`connect` checks the key and the model name before any work (one-line errors). Every reply is
kept in an append-only JSONL cache keyed by sha256 of (base_url, model, template id, messages,
attempt), written as each reply arrives, so a rerun, or a run resumed after a kill, asks the
endpoint only what it has not answered yet. The client retries 429 and 5xx answers itself with
exponential backoff (`max_retries`); games run `concurrency` at a time from a thread pool.
"""
from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pmcllama.errors import UserError
from pmcllama.inputs import iter_jsonl
from pmcllama.judging.templates import Template, parse_verdict
from pmcllama.rationales import end_last_line


class Cache:
    """key -> reply record, loaded from and appended to one JSONL file (a torn last line is ignored)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, dict] = {}
        if path.is_file():
            for lineno, rec in iter_jsonl(path, "judge cache", torn_tail_ok=True):
                if not (isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("reply"), str)):
                    raise UserError("not a judge cache row {key, reply, ...} (delete the line or the cache "
                                    "to ask again)", path, lineno)
                self.data[rec["key"]] = rec
            end_last_line(path)  # a line torn by a killed run is cut off, so appends start clean
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, rec: dict) -> None:
        with self.lock:
            self.data[rec["key"]] = rec
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


@dataclass
class Endpoint:
    client: object
    base_url: str
    model: str
    max_tokens: int
    max_reply_chars: int
    cache: Cache
    calls: int = 0
    cached: int = 0
    stopped: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, template: Template, messages: list[dict], attempt: int) -> dict:
        """{'reply', 'finish_reason'} for these messages, from the cache or the endpoint."""
        key = hashlib.sha256(json.dumps([self.base_url.rstrip("/"), self.model, template.id, messages, attempt],
                                        ensure_ascii=False).encode()).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            with self.lock:
                self.cached += 1
            return hit
        import openai

        if self.stopped:  # another game met a fatal error: ask nothing more
            raise UserError(self.stopped, self.base_url)
        fatal = ""
        try:
            resp = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                       max_tokens=self.max_tokens)
        except openai.BadRequestError as e:  # e.g. a prompt longer than the judge's context
            return {"reply": None, "error": f"refused by the endpoint: {_message(e)}"}
        except openai.AuthenticationError as e:
            fatal = f"the judge endpoint refused the API key: {_message(e)}"
        except openai.APIConnectionError as e:
            fatal = f"lost the judge endpoint ({e}); rerun to resume: answers so far are cached"
        except openai.APIStatusError as e:  # 429/5xx after the client's retries, or another refusal
            fatal = f"the judge endpoint answered {e.status_code}: {_message(e)}; rerun to resume: " \
                    "answers so far are cached"
        if fatal:
            self.stopped = fatal
            raise UserError(fatal, self.base_url)
        with self.lock:
            self.calls += 1
        choice = resp.choices[0]
        rec = {"key": key, "reply": choice.message.content or "", "finish_reason": choice.finish_reason,
               "model": self.model, "template": template.id}
        self.cache.put(rec)
        return rec

    def game(self, template: Template, messages: list[dict]) -> dict:
        """One judged order: the verdict, or None after one retry, with every raw reply."""
        replies, why = [], None
        for attempt in (0, 1):
            rec = self.ask(template, messages, attempt)
            if rec.get("reply") is None:
                return {"verdict": None, "replies": replies, "failure": rec["error"]}
            reply = rec["reply"]
            replies.append(reply)
            if len(reply) > self.max_reply_chars:
                why = f"reply of {len(reply)} characters, over max_reply_chars={self.max_reply_chars}"
                continue
            verdict = parse_verdict(reply)
            if verdict is not None:
                return {"verdict": verdict, "replies": replies, "failure": None}
            why = "no [[A]], [[B]] or [[C]] verdict in the reply (cut at max_tokens)" \
                if rec.get("finish_reason") == "length" else "no [[A]], [[B]] or [[C]] verdict in the reply"
        return {"verdict": None, "replies": replies, "failure": why}


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))


def connect(base_url: str, model: str | None, api_key: str | None, key_env: str, timeout: float,
            max_retries: int, max_tokens: int, max_reply_chars: int, cache_path: Path) -> Endpoint:
    """The endpoint, after checking that it answers, accepts the key and serves `model`."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key or "no-key", timeout=timeout,
                           max_retries=max_retries)
    try:
        listed = [m.id for m in client.models.list().data]
    except openai.AuthenticationError as e:
        given = f"${key_env}" if api_key else f"no key: ${key_env} is not set"
        raise UserError(f"the judge endpoint refused the API key ({given}): {_message(e)}", base_url) from None
    except openai.APIConnectionError:
        raise UserError("cannot reach the judge endpoint (is the server running? base_url should end in "
                        "/v1)", base_url) from None
    except openai.APIStatusError as e:
        raise UserError(f"the judge endpoint answered {e.status_code} to GET /models: {_message(e)}",
                        base_url) from None
    if model is None:
        if len(listed) != 1:
            raise UserError(f"name the judge model (model=...): the endpoint lists {', '.join(listed) or 'none'}",
                            base_url)
        model = listed[0]
    elif model not in listed:
        raise UserError(f"the endpoint does not list judge model {model!r}; it lists: "
                        f"{', '.join(listed) or 'none'}", base_url)
    return Endpoint(client, base_url, model, max_tokens, max_reply_chars, Cache(cache_path))


def run_games(endpoint: Endpoint, template: Template, games: list[list[dict]], concurrency: int,
              bar: Callable | None = None) -> list[dict]:
    """Judge every game (a message list), `concurrency` at a time; results in the games' order."""
    results: list = [None] * len(games)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(endpoint.game, template, g): i for i, g in enumerate(games)}
        try:
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if bar is not None:
                    bar.update(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results
