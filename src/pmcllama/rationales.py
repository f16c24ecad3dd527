"""Rationales for QA items that lack one, written by a model behind an OpenAI-compatible
endpoint (a local server or any provider), as PMC-LLaMA did with ChatGPT. Optional: the
instruction set builds without it, and a failing endpoint only leaves items without rationale.

Each answer is cached in a JSONL file ({key, id, model, rationale} a line, appended as soon as
it arrives) under a key hashing the model name, the question with its options and the answer,
so a rerun, or a run after an interruption, requests only what is not cached yet. Requests
are sequential, at most `max_requests_per_s`, and retried with exponential backoff on
connection errors, timeouts, 429 and 5xx answers; after `max_failures` items in a row fail,
no more requests are made in this run.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from pydantic import Field

from pmcllama.config import Config
from pmcllama.data.qa import QAItem
from pmcllama.errors import UserError
from pmcllama.inputs import iter_jsonl, whole_json

SYSTEM = "You are a medical expert who explains the answers of medical exam questions accurately and concisely."
ASK = ("{question}\n\nThe correct answer is {answer}.\nExplain in at most {sentences} sentences why this answer "
       "is correct{others}. Give the explanation only, without restating the question.")


class RationaleConfig(Config):
    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    model: str = Field(description="model name sent to the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key "
                             "(unset: no key, for a local server)")
    max_requests_per_s: float = Field(2.0, gt=0, description="request rate limit")
    max_items: int | None = Field(None, ge=1, description="request at most this many new rationales per run (None = all)")
    cache: str | None = Field(None, description="JSONL cache of answers (None = <out>.rationales.jsonl beside the output folder)")
    sources: list[str] = Field(default_factory=list, description="QA sources to complete (empty = every "
                               "medqa/medmcqa/pubmedqa/mmlu source whose answer_format shows a rationale)")
    sentences: int = Field(5, ge=1, description="length asked for, in sentences")
    max_tokens: int = Field(400, ge=16, description="answer length limit in tokens")
    temperature: float = Field(0.0, ge=0, description="sampling temperature")
    timeout_s: float = Field(60.0, gt=0, description="timeout of one request")
    max_retries: int = Field(4, ge=0, description="retries of a failed request")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay, doubled at every retry (at most 60 s)")
    max_failures: int = Field(3, ge=1, description="stop requesting after this many items in a row failed")


def item_key(item: QAItem, model: str) -> str:
    answer = item.options.get(item.answer, "") if item.options else ""
    text = json.dumps([model, item.prompt(), item.answer, answer], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def read_cache(path: Path) -> dict[str, str]:
    """key -> rationale. A half-written last line (a run killed mid-write) is left out; any
    other line that is not a {key, rationale} object is an error naming the file and line."""
    cache: dict[str, str] = {}
    if not path.is_file():
        return cache
    for lineno, row in iter_jsonl(path, "rationale cache", torn_tail_ok=True):
        if not (isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("rationale"), str)):
            raise UserError("not a rationale cache row {key, rationale, ...} (delete the line or the "
                            "cache to request it again)", path, lineno)
        cache[row["key"]] = row["rationale"]
    return cache


def end_last_line(path: Path) -> bool:
    """Make appends start a fresh line: a last line without its newline gets one when it is
    complete JSON, or is cut off when half-written (a run killed mid-write; True then)."""
    data = path.read_bytes() if path.is_file() else b""
    if not data or data.endswith(b"\n"):
        return False
    start = data.rfind(b"\n") + 1
    if whole_json(data[start:].decode("utf-8", "replace")) is not None:
        with open(path, "ab") as f:
            f.write(b"\n")
        return False
    with open(path, "r+b") as f:
        f.truncate(start)
    return True


def prompt(item: QAItem, cfg: RationaleConfig) -> list[dict]:
    answer = f"{item.answer}. {item.options[item.answer]}" if item.options else item.answer
    others = " and the other options are not" if item.options else ""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": ASK.format(question=item.prompt(), answer=answer,
                                                  sentences=cfg.sentences, others=others)}]


class Writer:
    """Requests with rate limit and retries; `ask` returns the text or None (and why)."""

    def __init__(self, cfg: RationaleConfig, sleep=time.sleep, clock=time.monotonic):
        from openai import OpenAI

        key = os.environ.get(cfg.api_key_env) or "no-key"
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)
        self.cfg, self.sleep, self.clock, self.last = cfg, sleep, clock, None

    def _wait(self) -> None:
        gap = 1.0 / self.cfg.max_requests_per_s
        if self.last is not None and self.clock() - self.last < gap:
            self.sleep(gap - (self.clock() - self.last))
        self.last = self.clock()

    def ask(self, messages: list[dict]) -> tuple[str | None, str]:
        import openai

        error = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.sleep(min(60.0, self.cfg.backoff_s * 2 ** (attempt - 1)))
            self._wait()
            try:
                reply = self.client.chat.completions.create(
                    model=self.cfg.model, messages=messages, temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                error = f"{type(e).__name__}: {e}"
                continue
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                return None, f"{type(e).__name__}: {e}"
            text = (reply.choices[0].message.content or "").strip() if reply.choices else ""
            if text:
                return text, ""
            error = "empty answer"
        return None, error


def wants_rationale(record: dict, names: set[str]) -> bool:
    item = record.get("_qa")
    return (item is not None and not item.rationale and record.get("_answer_format") != "letter"
            and (not names or record["source"] in names))


def fill(records: list[dict], cfg: RationaleConfig, cache_path: Path, log=print, writer: Writer | None = None
         ) -> Counter:
    """Give QA records without a rationale one (cached or requested), rewriting their answer.
    Counts: cached, requested, failed, not_requested (over max_items or after max_failures)."""
    todo = [r for r in records if wants_rationale(r, set(cfg.sources))]
    counts: Counter = Counter()
    if not todo:
        return counts
    cache = read_cache(cache_path)
    if end_last_line(cache_path):
        log(f"[instructions] rationales: {cache_path}: dropped a half-written last line (interrupted run)")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    failures, last_error = 0, ""
    with open(cache_path, "a", encoding="utf-8") as f:
        for r in todo:
            item: QAItem = r["_qa"]
            key = item_key(item, cfg.model)
            text = cache.get(key)
            if text is not None:
                counts["cached"] += 1
            elif failures >= cfg.max_failures or (cfg.max_items and counts["requested"] >= cfg.max_items):
                counts["not_requested"] += 1
                continue
            else:
                writer = writer or Writer(cfg)
                text, last_error = writer.ask(prompt(item, cfg))
                if text is None:
                    failures += 1
                    counts["failed"] += 1
                    continue
                failures = 0
                counts["requested"] += 1
                cache[key] = text
                f.write(json.dumps({"key": key, "id": r["id"], "model": cfg.model, "rationale": text},
                                   ensure_ascii=False) + "\n")
                f.flush()
            item.rationale = text
            r["messages"][-1] = {"role": "assistant", "content": item.reply(r["_answer_format"])}
    if counts["failed"]:
        log(f"[instructions] rationales: {counts['failed']} request(s) failed, last: {last_error}")
    return counts
