"""Run each side of a benchmark in its own fresh process and collect its RESULT line."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def report_side(result: dict, tokens_key: str) -> None:
    """Called inside a side's process: add rate and peak RSS, print the RESULT line."""
    result[tokens_key] = result["tokens"] / result["seconds"]
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(result))


def launch(script: str, name: str, argv: list[str], threads: int) -> dict:
    """Run `script --side name argv...` with `threads` threads, offline; return its RESULT."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, script, "--side", name, *argv], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{name} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][7:])


def save(path: str, report: dict) -> None:
    """Write a benchmark's result JSON (with the UTC date) under bench/results/."""
    import time
    from pathlib import Path

    report = {**report, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
