"""Rationale generation against a local fake OpenAI-compatible server: cache, resume, retries,
rate limit, and the pipeline going on without the endpoint."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pmcllama.config import build_config
from pmcllama.instructions import InstructionsConfig, run
from pmcllama.rationales import RationaleConfig, Writer

MEDQA = [
    {"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "Vitamin A", "B": "Vitamin B12",
     "C": "Vitamin C", "D": "Vitamin D"}, "answer_idx": "C"},
    {"question": "Most common cause of community-acquired pneumonia?", "options": {
        "A": "S. aureus", "B": "S. pneumoniae", "C": "Klebsiella", "D": "Legionella"}, "answer_idx": "B"},
]
MEDMCQA = [
    {"id": "m1", "question": "Drug of choice for absence seizures:", "opa": "Phenytoin", "opb": "Ethosuximide",
     "opc": "Carbamazepine", "opd": "Phenobarbital", "cop": 2, "exp": "Ethosuximide blocks T-type channels."},
    {"id": "m2", "question": "Largest organ of the body?", "opa": "Liver", "opb": "Brain", "opc": "Skin",
     "opd": "Lung", "cop": 3, "exp": None},
]


class FakeOpenAI:
    """A /v1/chat/completions server: the first `fail` requests get HTTP 500, then an answer
    naming the request number."""

    def __init__(self, fail: int = 0):
        self.requests: list[dict] = []
        self.fail = fail
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if len(fake.requests) <= fake.fail:
                    self._send(500, {"error": {"message": "overloaded", "type": "server_error"}})
                    return
                question = body["messages"][-1]["content"].split("\n")[0]
                self._send(200, {
                    "id": f"c{len(fake.requests)}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": f"Because ({len(fake.requests)}) of {question}"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def make(tmp_path, url, answer_format="paper", **rationales):
    q = tmp_path / "medqa.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in MEDQA))
    m = tmp_path / "medmcqa.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in MEDMCQA))
    return build_config(InstructionsConfig, {
        "out": str(tmp_path / "out"), "val_fraction": 0, "system_prompt": None,
        "sources": [{"name": "medqa", "format": "medqa", "paths": [str(q)], "answer_format": answer_format},
                    {"name": "medmcqa", "format": "medmcqa", "paths": [str(m)]}],
        "rationales": {"base_url": url, "model": "fake-gpt", "api_key_env": "PMCLLAMA_TEST_KEY",
                       "max_requests_per_s": 1000, "backoff_s": 0, **rationales}})


def answers(out):
    return {json.loads(line)["id"]: json.loads(line)["messages"][-1]["content"]
            for line in (out / "train.jsonl").read_text().splitlines()}


def cache_rows(tmp_path):
    path = tmp_path / "out.rationales.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_rationales_written_cached_and_resumed(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("PMCLLAMA_TEST_KEY", "sk-test")
    out = run(make(tmp_path, fake.url))
    assert len(fake.requests) == 3  # two MedQA items and MedMCQA m2; m1 has its own explanation
    assert {r["path"] for r in fake.requests} == {"/v1/chat/completions"}
    assert fake.requests[0]["auth"] == "Bearer sk-test" and fake.requests[0]["body"]["model"] == "fake-gpt"
    ask = fake.requests[0]["body"]["messages"][-1]["content"]
    assert ask.startswith("Which vitamin deficiency causes scurvy?\nA. Vitamin A") and "C. Vitamin C" in ask
    got = answers(out)
    assert got["medqa-line-1"] == ("###Rationale: Because (1) of Which vitamin deficiency causes scurvy?\n\n"
                                   "###Answer: OPTION C IS CORRECT.")
    assert got["medmcqa-m1"].startswith("###Rationale: Ethosuximide blocks T-type channels.")
    assert got["medmcqa-m2"].startswith("###Rationale: Because (3) of Largest organ")
    rows = cache_rows(tmp_path)
    assert [r["id"] for r in rows] == ["medqa-line-1", "medqa-line-2", "medmcqa-m2"]
    assert len({r["key"] for r in rows}) == 3 and all(r["model"] == "fake-gpt" for r in rows)
    assert json.loads((out / "stats.json").read_text())["rationales"] == {"requested": 3}

    out = run(make(tmp_path, fake.url), force=True)  # a rerun asks nothing: every item is cached
    assert len(fake.requests) == 3 and answers(out) == got
    assert json.loads((out / "stats.json").read_text())["rationales"] == {"cached": 3}
    assert len(cache_rows(tmp_path)) == 3


def test_max_items_then_resume(tmp_path, fake):
    out = run(make(tmp_path, fake.url, max_items=2))
    assert len(fake.requests) == 2
    assert json.loads((out / "stats.json").read_text())["rationales"] == {"requested": 2, "not_requested": 1}
    assert answers(out)["medmcqa-m2"] == "###Answer: OPTION C IS CORRECT."  # left without one
    out = run(make(tmp_path, fake.url, max_items=2))  # the cache is an input: this reruns and goes on
    assert len(fake.requests) == 3
    assert json.loads((out / "stats.json").read_text())["rationales"] == {"cached": 2, "requested": 1}
    assert answers(out)["medmcqa-m2"].startswith("###Rationale: Because (3)")


def test_retries_server_errors(tmp_path):
    server = FakeOpenAI(fail=2)
    try:
        out = run(make(tmp_path, server.url, max_retries=2))
    finally:
        server.close()
    assert len(server.requests) == 5  # the first item needed three tries
    assert answers(out)["medqa-line-1"].startswith("###Rationale: Because (3)")


def test_endpoint_down_leaves_items_without_rationale(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    out = run(make(tmp_path, f"http://127.0.0.1:{port}/v1", max_retries=1, max_failures=2, timeout_s=5))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rationales"] == {"failed": 2, "not_requested": 1}
    assert stats["counts"]["train"] == 4
    assert answers(out)["medqa-line-1"] == "###Answer: OPTION C IS CORRECT."
    assert "2 request(s) failed, last: APIConnectionError" in capsys.readouterr().out
    assert cache_rows(tmp_path) == []


def test_letter_format_and_source_filter(tmp_path, fake):
    run(make(tmp_path, fake.url, answer_format="letter"))
    assert [r["body"]["messages"][-1]["content"].split("\n")[0] for r in fake.requests] == ["Largest organ of the body?"]
    (tmp_path / "b").mkdir()
    run(make(tmp_path / "b", fake.url, sources=["medqa"]))  # MedMCQA m2 is not asked for
    assert [r["body"]["messages"][-1]["content"].split("\n")[0] for r in fake.requests[1:]] == [
        "Which vitamin deficiency causes scurvy?", "Most common cause of community-acquired pneumonia?"]


def test_rate_limit_spaces_requests():
    now, slept = [0.0], []

    def sleep(s):
        slept.append(round(s, 3))
        now[0] += s

    w = Writer(RationaleConfig(base_url="http://127.0.0.1:9/v1", model="m", max_requests_per_s=4),
               sleep=sleep, clock=lambda: now[0])
    for _ in range(3):
        w._wait()
    assert slept == [0.25, 0.25]
