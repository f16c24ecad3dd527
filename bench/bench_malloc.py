"""Scoring with glibc keeping freed activations in the heap (`prepack.keep_freed_memory`, what
`evaluate_items` sets on CPU) against glibc's default, in turn, in fresh processes.

The setting is process-wide and cannot be undone, so each arm runs in its own process: the
same script scores the items of a bench_eval_parity shape with SmolLM2-135M in fp32 as `pmcllama
evaluate` does; in the default arm's process the setting is marked as already decided (not in
force) before anything runs, so malloc keeps glibc's defaults. (Setting any of glibc's MALLOC_*
variables instead would not give the default: most turn off its adaptive thresholds.) Arms
alternate (ABBA), `--rounds`
times; per arm the fastest time of `--passes` scorings of the items in one process (an evaluation of
several benchmarks), its page faults and system time, the ratio of the medians too, and whether the
predictions are identical. The CPU's name and extensions are in the result
(bench/results/malloc.json).

    python bench/bench_malloc.py --items 30 --rounds 4 --passes 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import bench_eval_parity as parity

HERE = Path(__file__).resolve().parent

CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
import bench_eval_parity as parity
from pmcllama.benchmarks.scoring import evaluate_items
from pmcllama.evaluate import load_for
from pmcllama.models import resolve
from pmcllama import prepack
if sys.argv[5] == "default":
    prepack._heap["done"] = False
torch.set_num_threads(int(sys.argv[4]))
model, tok = load_for(resolve("smollm2-135m"), "loglik", "fp32")
items = parity.write_data(Path(tempfile.mkdtemp()), [sys.argv[2]], int(sys.argv[3]))[sys.argv[2]]
evaluate_items(model, tok, items[:2], progress=False)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(int(sys.argv[6])):
    recs = evaluate_items(model, tok, items, progress=False)
seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"kept": prepack.keep_freed_memory(), "seconds": round(seconds, 3), "page_faults": r1.ru_minflt - r0.ru_minflt,
                  "system_seconds": round(r1.ru_stime - r0.ru_stime, 3), "preds": [r["pred"] for r in recs]}))
"""


def run(arm: str, shape: str, items: int, threads: int, passes: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(HERE), shape, str(items), str(threads), arm, str(passes)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["pubmedqa", "medqa_4options"])
    ap.add_argument("--items", type=int, default=30, help="items per shape")
    ap.add_argument("--rounds", type=int, default=4, help="runs of each arm")
    ap.add_argument("--passes", type=int, default=3,
                    help="scorings of the items timed together per process (an evaluation of several benchmarks)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "malloc.json"))
    args = ap.parse_args()
    result = {"model": "smollm2-135m", "precision": "fp32", "threads": args.threads, "cpu": parity.cpu_description(),
              "items": args.items, "passes": args.passes, "shapes": {}}
    for shape in args.shapes:
        runs: dict = {"default": [], "kept": []}
        for r in range(args.rounds):
            for arm in (("default", "kept") if r % 2 == 0 else ("kept", "default")):
                runs[arm].append(run(arm, shape, args.items, args.threads, args.passes))
        assert all(x["kept"] for x in runs["kept"]) and not any(x["kept"] for x in runs["default"])
        best = {arm: min(rs, key=lambda x: x["seconds"]) for arm, rs in runs.items()}
        row = {arm: {k: v for k, v in best[arm].items() if k != "preds"} | {"seconds_runs": [x["seconds"] for x in rs]}
               for arm, rs in runs.items()}
        row["ratio"] = round(best["default"]["seconds"] / best["kept"]["seconds"], 3)
        med = {arm: sorted(x["seconds"] for x in rs)[(len(rs) - 1) // 2] for arm, rs in runs.items()}
        row["median_ratio"] = round(med["default"] / med["kept"], 3)
        row["identical_predictions"] = best["default"]["preds"] == best["kept"]["preds"]
        result["shapes"][shape] = row
        print(f"{shape}: {args.items} items x {args.passes}, default {best['default']['seconds']:.2f} s "
              f"({best['default']['page_faults']} page faults, {best['default']['system_seconds']:.2f} s system), "
              f"kept {best['kept']['seconds']:.2f} s ({best['kept']['page_faults']} page faults, "
              f"{best['kept']['system_seconds']:.2f} s system): {row['ratio']:.3f}x (medians "
              f"{row['median_ratio']:.3f}x), identical predictions: "
              f"{row['identical_predictions']}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{result['cpu']}, {args.threads} threads; wrote {args.out}")


if __name__ == "__main__":
    main()
