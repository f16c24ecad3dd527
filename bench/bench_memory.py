"""Training memory: peak RSS of one `pmcllama pretrain` optimizer step per (seq_len, micro-batch),
with and without activation checkpointing, and the largest micro-batch per seq_len that fits
a memory budget (24 GB by default).

Each point is a fresh process running the pretrain stage for one step (fp32 AdamW, the
model's weights, gradients and optimizer state included) on a synthetic token corpus. Peak
memory grows linearly in the micro-batch at a fixed seq_len, so the script measures two
batches b and 2b (b = max(2, 4096 // seq_len): both well above the model-loading peak), fits
the line, and reports the largest batch the line keeps under `--budget-gb` minus
`--headroom-gb`; with `--verify` it also runs that batch and reports the measured peak.

    python bench/bench_memory.py --seq-lens 512 2048 --verify
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _sides import save
from bench_pretrain import make_corpus

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name or folder (default smollm2-135m)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048], help="sequence lengths to probe")
    p.add_argument("--budget-gb", type=float, default=24.0, help="memory to fit in (GB)")
    p.add_argument("--headroom-gb", type=float, default=2.0, help="kept free for the OS and data (GB)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--verify", action="store_true", help="also run the predicted largest batch (if it is larger)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_memory.json"), help="result JSON")
    p.add_argument("--point", nargs=4, help=argparse.SUPPRESS)  # seq batch ckpt corpus: one step, in this process
    return p.parse_args(argv)


def point(a) -> None:
    from pmcllama import pretrain
    from pmcllama.training.config import PretrainConfig

    seq, batch, ckpt, corpus = int(a.point[0]), int(a.point[1]), a.point[2] == "1", a.point[3]
    with tempfile.TemporaryDirectory() as tmp:
        pretrain.run(PretrainConfig(
            model=a.model, data=corpus, out=str(Path(tmp) / "out"), seq_len=seq, micro_batch=batch,
            global_batch=batch, max_steps=1, optimizer={"warmup_steps": 0}, precision="fp32", threads=a.threads,
            grad_checkpointing=ckpt, peak_flops=1e12), force=True)


def measure(a, seq: int, batch: int, ckpt: bool, corpus: Path) -> float:
    """Peak RSS (GB) of a fresh process running one step (its own rusage, via wait4)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--model", a.model, "--threads", str(a.threads),
                                 "--point", str(seq), str(batch), "1" if ckpt else "0", str(corpus)],
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"seq {seq} batch {batch} failed:\n{err.read()[-3000:]}")
    gb = usage.ru_maxrss * 1024 / 1e9
    print(f"  seq {seq:5d} batch {batch:3d} checkpointing {'on ' if ckpt else 'off'}: peak RSS {gb:6.2f} GB "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return gb


def main(argv=None) -> None:
    a = parse(argv)
    if a.point:
        return point(a)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "corpus", a.model, 16 * 4096)
        for ckpt in (False, True):
            for seq in sorted(a.seq_lens):
                b = max(2, 4096 // seq)
                one, two = (measure(a, seq, n, ckpt, corpus) for n in (b, 2 * b))
                per = max((two - one) / b, 1e-3)
                fit = int((a.budget_gb - a.headroom_gb - (one - b * per)) // per)
                row = {"seq_len": seq, "checkpointing": ckpt, "batches": [b, 2 * b], "peak_gb": [one, two],
                       "gb_per_sequence": per, "largest_batch_predicted": fit}
                if a.verify and fit > 2 * b:
                    row["peak_gb_at_largest"] = measure(a, seq, fit, ckpt, corpus)
                rows.append(row)
    report = {"bench": "memory", "model": a.model, "budget_gb": a.budget_gb, "headroom_gb": a.headroom_gb,
              "threads": a.threads, "precision": "fp32", "rows": rows}
    save(a.out, report)
    print(f"largest micro-batch within {a.budget_gb - a.headroom_gb:.0f} GB (fp32 AdamW):")
    for r in rows:
        print(f"  seq {r['seq_len']:5d} checkpointing {'on ' if r['checkpointing'] else 'off'}: "
              f"{r['largest_batch_predicted']} sequences ({r['gb_per_sequence']:.2f} GB each)"
              + (f", measured {r['peak_gb_at_largest']:.1f} GB" if "peak_gb_at_largest" in r else ""))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
