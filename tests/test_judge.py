"""`pmcllama judge`: verdict parsing, the statistics, and whole runs over HTTP against fake judges
(a small OpenAI-compatible server on 127.0.0.1 that counts calls) and a live `pmcllama serve`."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from pmcllama.benchmarks.stats import bootstrap_ci, length_controlled_win_rate, sign_test
from pmcllama.errors import UserError
from pmcllama.judge import JudgeConfig, judge_recipe, run
from pmcllama.judging.templates import TEMPLATES, load_template, parse_verdict

pytest.importorskip("openai")

KEY = "judge-key"
_ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)


class FakeJudge(ThreadingHTTPServer):
    """OpenAI-compatible /v1/models and /v1/chat/completions; `mode` picks the verdict."""

    daemon_threads = True

    def __init__(self, mode: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode, self.calls, self.fail_next, self.delay, self.seen = mode, 0, 0, 0.0, []
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reply(self, text: str) -> str:
        if self.mode == "always-A":
            return "Assistant A's answer is better. [[A]]"
        if self.mode == "longer":
            ans = dict(_ANSWER.findall(text))
            return "[[A]]" if len(ans["A"]) > len(ans["B"]) else "[[B]]" if len(ans["B"]) > len(ans["A"]) else "[[C]]"
        if self.mode == "huge":
            return "blah " * 100 + "[[A]]"
        return "Both answers have merits and flaws."  # no verdict


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
            return False
        return True

    def do_GET(self):
        if self._authorized():
            self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model", "owned_by": "t"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorized():
            return
        srv: FakeJudge = self.server
        with srv.lock:
            srv.calls += 1
            srv.seen.append(body)
            failing = srv.fail_next > 0
            srv.fail_next -= failing
        if failing:
            return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}})
        time.sleep(srv.delay)
        text = body["messages"][-1]["content"]
        self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": srv.reply(text)}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def fake(request, monkeypatch):
    srv = FakeJudge(getattr(request, "param", "always-A"))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("JUDGE_KEY", KEY)
    yield srv
    srv.shutdown()


def gens(path: Path, rows: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows), encoding="utf-8")
    return str(path)


def judge_cfg(tmp_path, srv, a, b, **kw) -> JudgeConfig:
    return JudgeConfig(a=a, b=b, base_url=srv.url, api_key_env="JUDGE_KEY", cache=str(tmp_path / "cache.jsonl"),
                       out=str(tmp_path / "out"), max_retries=2, **kw)


def summary(tmp_path, kind="b_vs_a") -> dict:
    return json.loads((tmp_path / "out" / "judge.json").read_text())["comparisons"][kind]


def test_verdicts_read_from_real_looking_replies():
    assert parse_verdict("[[B]]\n\nAssistant B explains the mechanism of metformin correctly.") == "B"
    assert parse_verdict("Assistant A is vague; B names the lung disease.\n\nFinal verdict: [[B]]") == "B"
    assert parse_verdict("At first I thought [[A]], but on reflection the better answer is [[B]].") == "B"
    assert parse_verdict("Both are equally related. [[C]]") == "C"
    assert parse_verdict("My verdict: [[ tie ]]") == "C"
    assert parse_verdict("Assistant A is better. Verdict: A") is None
    assert parse_verdict("[A] is better") is None
    assert parse_verdict("") is None


def test_templates_are_versioned_in_help_and_hold_the_papers_question(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pmcllama", "judge", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for tid in TEMPLATES:
        assert re.fullmatch(r"[a-z-]+-v\d+", tid) and tid in out.stdout
    msgs = TEMPLATES["paper-relatedness-v1"].messages("IN", "OUT1", "OUT2")
    assert "Considering the two outputs, which one do you think is more related to the input?" in msgs[-1]["content"]
    assert msgs[-1]["content"].index("OUT1") < msgs[-1]["content"].index("OUT2")
    user = tmp_path / "mine.txt"
    user.write_text("Q: {input}\n1: {output_a}\n2: {output_b}\nRef: {reference}\n[[A]] [[B]] or [[C]]")
    t = load_template(str(user))
    assert t.id.startswith("file:mine.txt@") and t.messages("q", "x", "y", "r")[-1]["content"] == \
        "Q: q\n1: x\n2: y\nRef: r\n[[A]] [[B]] or [[C]]"
    user.write_text("no placeholders")
    with pytest.raises(UserError, match=r"no \{input\} placeholder"):
        load_template(str(user))
    with pytest.raises(UserError, match="unknown judge template"):
        load_template("pairwise-v9")


def test_sign_test_and_bootstrap_against_hand_computed_values():
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109375
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert bootstrap_ci([1.0] * 12, 500) == [1.0, 1.0]
    # two items 0 and 1: resampled means are 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0], 4000) == [0.0, 1.0]
    lo, hi = bootstrap_ci([0.0, 1.0] * 200, 4000)  # normal approximation: 0.5 -+ 1.96 * 0.5 / 20
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)
    assert length_controlled_win_rate([1, 0, 0.5], [5, 5, 5], [5, 5, 5]) == pytest.approx(0.5, abs=1e-6)


def test_position_biased_judge_is_all_ties_and_fully_inconsistent(tmp_path, fake):
    rows = [(f"Prompt {i}", f"answer {i}") for i in range(6)]
    a = gens(tmp_path / "a.jsonl", rows)
    b = gens(tmp_path / "b.jsonl", [(p, c + " more") for p, c in rows])
    run(judge_cfg(tmp_path, fake, a, b))
    s = summary(tmp_path)
    assert (s["n"], s["wins"], s["losses"], s["ties"]) == (6, 0, 0, 6)
    assert s["position_inconsistency"] == 1.0 and s["win_rate"] == 0.5
    assert fake.calls == 12  # both orders of every pair
    rec = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert len(rec) == 6 and all(len(r["replies_xy"]) == len(r["replies_yx"]) == 1 for r in rec)
    assert {(r["verdict_xy"], r["verdict_yx"]) for r in rec} == {("A", "A")}
    assert (tmp_path / "out" / "judge.png").stat().st_size > 1000


@pytest.mark.parametrize("fake", ["longer"], indirect=True)
def test_length_control_pulls_a_longer_text_judge_towards_half(tmp_path, fake):
    rows = [(f"Prompt {i}", "x" * 40) for i in range(10)]
    b_lens = [60, 70, 80, 90, 100, 110, 120, 130, 20, 30]  # B longer on 8 of 10
    a = gens(tmp_path / "a.jsonl", rows)
    b = gens(tmp_path / "b.jsonl", [(p, "y" * n) for (p, _), n in zip(rows, b_lens)])
    run(judge_cfg(tmp_path, fake, a, b))
    s = summary(tmp_path)
    assert (s["wins"], s["losses"], s["position_inconsistency"]) == (8, 2, 0.0)
    assert s["win_rate"] == 0.8 and s["sign_test_p"] == pytest.approx(0.109375)
    assert abs(s["lc_win_rate"] - 0.5) < abs(s["win_rate"] - 0.5)
    assert s["mean_len_y"] == sum(b_lens) / 10 and s["mean_len_x"] == 40


def test_cache_second_run_makes_no_calls_and_429_is_retried(tmp_path, fake):
    rows = [(f"P{i}", f"c{i}") for i in range(4)]
    a, b = gens(tmp_path / "a.jsonl", rows), gens(tmp_path / "b.jsonl", [(p, c + "!") for p, c in rows])
    fake.fail_next = 2  # two 429s: the client backs off and retries
    run(judge_cfg(tmp_path, fake, a, b))
    assert fake.calls == 8 + 2
    assert all(body["temperature"] == 0 for body in fake.seen)
    run(judge_cfg(tmp_path, fake, a, b), force=True)
    assert fake.calls == 10  # everything from the cache
    assert json.loads((tmp_path / "out" / "judge.json").read_text())["cached"] == 8


@pytest.mark.parametrize("fake", ["no-verdict"], indirect=True)
def test_unparsable_replies_are_retried_once_then_listed(tmp_path, fake):
    rows = [(f"P{i}", f"c{i}") for i in range(3)]
    a, b = gens(tmp_path / "a.jsonl", rows), gens(tmp_path / "b.jsonl", [(p, c + "!") for p, c in rows])
    run(judge_cfg(tmp_path, fake, a, b))
    assert fake.calls == 3 * 2 * 2
    s = summary(tmp_path)
    assert (s["n"], s["unjudged"], s["win_rate"]) == (0, 3, None)
    md = (tmp_path / "out" / "judge.md").read_text()
    assert md.count("no [[A]], [[B]] or [[C]] verdict in the reply") == 3
    rec = json.loads((tmp_path / "out" / "judgments.jsonl").read_text().splitlines()[0])
    assert rec["score"] is None and len(rec["replies_xy"]) == 2


@pytest.mark.parametrize("fake", ["huge"], indirect=True)
def test_long_replies_and_long_outputs_are_listed_not_read(tmp_path, fake):
    rows = [("P0", "short"), ("P1", "z" * 500)]
    a, b = gens(tmp_path / "a.jsonl", rows), gens(tmp_path / "b.jsonl", [("P0", "brief"), ("P1", "y" * 500)])
    run(judge_cfg(tmp_path, fake, a, b, max_reply_chars=100, max_output_chars=200))
    s = summary(tmp_path)
    assert (s["n"], s["unjudged"]) == (0, 1)
    md = (tmp_path / "out" / "judge.md").read_text()
    assert "over max_reply_chars=100" in md and "A's completion is over max_output_chars=200" in md
    assert fake.calls == 4  # P1 was never sent


def test_files_matched_by_prompt_text_and_missing_ones_listed(tmp_path, fake, capsys):
    a = gens(tmp_path / "base" / "generations.jsonl", [("p1", "a1"), ("p2", "a2"), ("p3", "a3"), ("p4", "a4")])
    b = gens(tmp_path / "tuned" / "generations.jsonl", [("p5", "b5"), ("p3", "b3"), ("p2", "b2"), ("p4", "b4")])
    run(judge_cfg(tmp_path, fake, str(tmp_path / "base"), b))
    rec = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["x"], r["y"]) for r in rec] == [("p2", "a2", "b2"), ("p3", "a3", "b3"), ("p4", "a4", "b4")]
    md = (tmp_path / "out" / "judge.md").read_text()
    assert '"p1": missing from B' in md and '"p5": missing from A' in md and "tuned vs base" in md
    out = capsys.readouterr().out
    assert "skipped 'p1': missing from B" in out and "skipped 'p5': missing from A" in out
    assert a


@pytest.mark.parametrize("fake", ["longer"], indirect=True)
def test_reference_answers_are_shown_and_each_side_judged_against_them(tmp_path, fake):
    rows = [("What is COPD?", "a lung disease"), ("What is metformin?", "a drug")]
    a = gens(tmp_path / "a.jsonl", rows)
    b = gens(tmp_path / "b.jsonl", [(p, c + " that is common") for p, c in rows])
    refs = tmp_path / "medquad.jsonl"
    refs.write_text("".join(json.dumps({"prompt": p, "reference": "an expert answer that is much longer " * 3})
                            + "\n" for p, _ in rows))
    run(judge_cfg(tmp_path, fake, a, b, prompts_file=str(refs)))
    data = json.loads((tmp_path / "out" / "judge.json").read_text())["comparisons"]
    assert set(data) == {"b_vs_a", "a_vs_reference", "b_vs_reference"}
    assert data["b_vs_a"]["win_rate"] == 1.0
    assert data["a_vs_reference"]["win_rate"] == 0.0 and data["b_vs_reference"]["win_rate"] == 0.0
    shown = [b["messages"][-1]["content"] for b in fake.seen]
    assert sum("[The Start of Reference Answer]" in t for t in shown) == 4  # the B-vs-A games
    assert "vs reference" in (tmp_path / "out" / "judge.md").read_text()


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pmcllama", "judge", *args], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_refused_key_and_unknown_model_are_one_line_before_any_work(tmp_path, fake, monkeypatch):
    a = gens(tmp_path / "a.jsonl", [("p", "c")])
    common = [a, a, f"base_url={fake.url}", "api_key_env=JUDGE_KEY", f"out={tmp_path / 'out'}",
              f"cache={tmp_path / 'c.jsonl'}"]
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    bad = cli(*common)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "refused the API key ($JUDGE_KEY)" in bad.stderr
    monkeypatch.setenv("JUDGE_KEY", KEY)
    unknown = cli(*common, "model=gpt-9")
    assert unknown.returncode == 2 and "does not list judge model 'gpt-9'; it lists: fake-judge" in unknown.stderr
    one = cli(a)
    assert one.returncode == 2 and "two generations files" in one.stderr
    assert fake.calls == 0 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_resume_after_kill_asks_only_what_is_not_cached(tmp_path, fake):
    rows = [(f"Prompt number {i}", f"c{i}") for i in range(20)]
    a, b = gens(tmp_path / "a.jsonl", rows), gens(tmp_path / "b.jsonl", [(p, c + "!") for p, c in rows])
    fake.delay = 0.05
    cache = tmp_path / "cache.jsonl"
    args = [a, b, f"base_url={fake.url}", "api_key_env=JUDGE_KEY", f"out={tmp_path / 'out'}", f"cache={cache}",
            "concurrency=2"]
    proc = subprocess.Popen([sys.executable, "-m", "pmcllama", "judge", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240  # a busy machine starts Python slowly
    while fake.calls < 10 and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (tmp_path / "out").exists()
    from pmcllama.judging.client import Cache

    cached = len(Cache(cache).data)  # whole lines only: the kill may tear the last one
    assert 0 < cached < 40, (fake.calls, cached)
    before = fake.calls
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert fake.calls - before == 40 - cached
    assert summary(tmp_path)["n"] == 20


def test_recipe_judge_step_and_skip_line(tmp_path, fake, capsys):
    from pmcllama.judge import JudgeSection

    judge_recipe(JudgeSection(), tmp_path, [("base", "tiny-llama"), ("tuned", "tiny-llama")], [])
    assert "[judge] skipped: no judge.base_url" in capsys.readouterr().out
    (tmp_path / "results.md").write_text("| table |\n")
    section = JudgeSection(base_url=fake.url, api_key_env="JUDGE_KEY", cache=str(tmp_path / "c.jsonl"),
                           max_new_tokens=4)
    for _ in range(2):  # a rerun replaces the section instead of adding a second one
        judge_recipe(section, tmp_path, [("base", "tiny-llama"), ("tuned", "tiny-llama")], ["Hypertension is"],
                     force=True)
    results = (tmp_path / "results.md").read_text()
    assert results.startswith("| table |") and results.count("## Judged comparison") == 1
    assert "| tuned vs base | 5 | 0 | 5 | 0 |" in results  # the paper's four prompts + the generate prompt
    assert "## Judged comparison" in (tmp_path / "report.md").read_text()
    assert len((tmp_path / "judge" / "generations_a.jsonl").read_text().splitlines()) == 5


@pytest.mark.slow
def test_live_pmcllama_serve_as_the_judge(tmp_path):
    """The whole path through HTTP and the openai client to a real server; its request counter shows
    that a rerun is answered from the cache."""
    from test_serve import KEY as SERVE_KEY, start_server, stop_server

    proc, url = start_server("tiny-llama", "max_batch=8", "name=judge")
    try:
        rows = [("Hypertension is", "high blood pressure"), ("Metformin is", "a drug for diabetes")]
        a = gens(tmp_path / "base" / "generations.jsonl", rows)
        b = gens(tmp_path / "tuned" / "generations.jsonl", [(p, c + ", often") for p, c in rows])
        args = [a, b, f"base_url={url}/v1", "model=judge", "api_key_env=SERVE_KEY", "template=paper-relatedness-v1",
                "max_tokens=8", f"cache={tmp_path / 'cache.jsonl'}", f"out={tmp_path / 'out'}"]
        env = {**__import__("os").environ, "SERVE_KEY": SERVE_KEY}
        first = cli(*args, env=env)
        assert first.returncode == 0, first.stderr
        served = httpx.get(url + "/health", timeout=30).json()["requests"]
        data = json.loads((tmp_path / "out" / "judge.json").read_text())
        assert data["calls"] == served >= 4 and data["judge"]["model"] == "judge"
        s = data["comparisons"]["b_vs_a"]
        assert s["n"] + s["unjudged"] == 2  # a random model rarely writes a verdict: then it is listed
        again = cli(*args, "--force", env=env)
        assert again.returncode == 0, again.stderr
        assert httpx.get(url + "/health", timeout=30).json()["requests"] == served
        wrong = cli(*args, env={**env, "SERVE_KEY": "nope"})
        assert wrong.returncode == 2 and "refused the API key" in wrong.stderr
    finally:
        stop_server(proc)


def test_cache_cuts_a_line_torn_by_a_kill_and_appends_clean(tmp_path):
    from pmcllama.judging.client import Cache

    path = tmp_path / "c.jsonl"
    path.write_text('{"key": "k1", "reply": "[[A]]"}\n{"key": "k2", "rep')
    cache = Cache(path)
    assert set(cache.data) == {"k1"}
    cache.put({"key": "k3", "reply": "[[B]]"})
    assert set(Cache(path).data) == {"k1", "k3"}
    path.write_text('{"key": "k1"}\n')
    with pytest.raises(UserError, match=r"c.jsonl:1: not a judge cache row"):
        Cache(path)


def test_endpoint_that_keeps_failing_stops_in_one_line_and_keeps_what_it_has(tmp_path, fake):
    rows = [(f"P{i}", f"c{i}") for i in range(2)]
    a, b = gens(tmp_path / "a.jsonl", rows), gens(tmp_path / "b.jsonl", [(p, c + "!") for p, c in rows])
    fake.fail_next = 100  # 429 on every call: after max_retries=2 the run stops
    with pytest.raises(UserError, match="answered 429: rate limited; rerun to resume"):
        run(judge_cfg(tmp_path, fake, a, b, concurrency=1))
    assert fake.calls == 3 and not (tmp_path / "out").exists()
    fake.fail_next = 0
    run(judge_cfg(tmp_path, fake, a, b))
    assert summary(tmp_path)["n"] == 2
