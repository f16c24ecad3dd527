"""Reliability under load: `pmcllama serve` with many concurrent clients sending a mix of valid,
invalid and cancelled-mid-stream requests for a fixed time, on 127.0.0.1 only.

Each client loops until the time is up, picking in turn: a streamed chat answer read to the
end, a non-streamed answer, a stream it drops after two chunks, and an invalid body (bad JSON,
a wrong type, max_tokens beyond the context). A watcher polls /health every second and the
server's RSS. Pass: no 5xx, no connection failure, every valid request answered (200) or
refused with 503, every invalid one 4xx, /health answering throughout.

    python bench/bench_serve_soak.py --clients 50 --seconds 120
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import start  # noqa: E402

BAD = [b"{not json", b'{"messages": "hi"}', b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000}']


def client(url: str, model: str, until: float, k: int, counts: collections.Counter, lock: threading.Lock) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": f"Question {k}: what is a fever?"}],
            "max_tokens": 16, "temperature": 0}
    n = k
    with httpx.Client(base_url=url, timeout=300) as http:
        while time.time() < until:
            kind = ("stream", "whole", "drop", "bad")[n % 4]
            n += 1
            try:
                if kind == "bad":
                    r = http.post("/v1/chat/completions", content=BAD[n % len(BAD)],
                                  headers={"Content-Type": "application/json"})
                    outcome = f"bad:{r.status_code // 100}xx"
                elif kind == "whole":
                    r = http.post("/v1/chat/completions", json=body)
                    outcome = f"whole:{r.status_code}"
                else:
                    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                        lines = 0
                        for line in r.iter_lines():
                            lines += bool(line)
                            if kind == "drop" and lines >= 2:
                                break
                        outcome = f"{kind}:{r.status_code}"
            except httpx.HTTPError as e:
                outcome = f"{kind}:error:{type(e).__name__}"
            with lock:
                counts[outcome] += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serve_soak.json"))
    args = ap.parse_args(argv)

    from pmcllama.models import resolve

    proc, url, model = start("pmcllama", str(resolve(args.model)), args.threads, args.max_batch, "")
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    until = time.time() + args.seconds
    health = {"ok": 0, "failed": 0, "slowest_s": 0.0}
    rss = []
    try:
        workers = [threading.Thread(target=client, args=(url, model, until, k, counts, lock)) for k in range(args.clients)]
        for w in workers:
            w.start()
        while time.time() < until:
            t0 = time.perf_counter()
            try:
                ok = httpx.get(url + "/health", timeout=10).json().get("status") == "ok"
            except httpx.HTTPError:
                ok = False
            health["ok" if ok else "failed"] += 1
            health["slowest_s"] = round(max(health["slowest_s"], time.perf_counter() - t0), 3)
            rss.append(psutil.Process(proc.pid).memory_info().rss)
            time.sleep(1)
        for w in workers:
            w.join()
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    valid = {k: v for k, v in counts.items() if not k.startswith("bad")}
    report = {"model": args.model, "clients": args.clients, "seconds": args.seconds, "outcomes": dict(counts),
              "server_errors": sum(v for k, v in counts.items() if ":5" in k and not k.endswith(":503")),
              "connection_failures": sum(v for k, v in counts.items() if ":error:" in k),
              "valid_not_answered": sum(v for k, v in valid.items() if not k.endswith((":200", ":503"))),
              "invalid_not_4xx": sum(v for k, v in counts.items() if k.startswith("bad") and k != "bad:4xx"),
              "health": health, "rss_gb_first_last_max": [round(rss[0] / 1e9, 2), round(rss[-1] / 1e9, 2),
                                                          round(max(rss) / 1e9, 2)] if rss else None,
              "server_alive_at_end": alive}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    bad = report["server_errors"] or report["connection_failures"] or report["valid_not_answered"] \
        or report["invalid_not_4xx"] or health["failed"] or not alive
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
