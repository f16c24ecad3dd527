"""Knowledge-injection training speed: `pmcllama pretrain` vs Hugging Face `Trainer`.

Both sides train the same model on the same seq_len token windows (the windows pmcllama's
packed mixture sampler draws, seed 0, from a token corpus this script writes), with the same
micro-batch, gradient accumulation, precision (fp32 by default), lr schedule and thread
count, each in a fresh process. Tokens/s is timed from the end of the first optimizer step to
the end of the last (the first carries one-off allocation costs on both sides). The script
also measures the fp32 (or bf16) matmul peak of this machine with the same threads and reports
each side's achieved model FLOP/s (6 x parameters x tokens/s) as a share of it, and each
side's peak RSS.

    python bench/bench_pretrain.py --steps 4 --seq-len 128 --micro-batch 2 --global-batch 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _sides import launch as run_side, report_side, save

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name or folder (default smollm2-135m)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    p.add_argument("--micro-batch", type=int, default=4, help="windows per forward/backward")
    p.add_argument("--global-batch", type=int, default=8, help="windows per optimizer step")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per side (the first is not timed)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both sides")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_pretrain.json"), help="result JSON")
    p.add_argument("--side", choices=["pmcllama", "trainer"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_corpus(folder: Path, model: str, n_tokens: int) -> Path:
    """A corpus stage output of random token documents (the speed does not depend on content)."""
    import numpy as np

    from pmcllama.data.shards import ShardWriter, dtype_for
    from pmcllama.models import load_tokenizer
    from pmcllama.stage import write_json

    tok = load_tokenizer(model)
    rng = np.random.default_rng(0)
    dtype = dtype_for(len(tok))
    with ShardWriter(folder / "papers", dtype) as w:
        made = 0
        while made < n_tokens:  # exactly n_tokens (a multiple of seq_len): every packed window is full
            n = min(int(rng.integers(200, 2000)), n_tokens - made)
            doc = np.append(rng.integers(100, len(tok) - 1, n - 1), tok.eos_token_id)
            w.add([doc])
            made += len(doc)
    write_json(folder / "manifest.json", {
        "stage": "corpus", "tokenizer": model, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id,
        "dtype": dtype, "sources": {"papers": {"weight": 1.0, "path": "papers"}}})
    return folder


def windows(corpus: Path, seq_len: int, n: int) -> list:
    """The first `n` windows pmcllama's packed sampler draws with seed 0."""
    from pmcllama.data.shards import read_corpus
    from pmcllama.training.data import MixtureSampler

    _, shards = read_corpus(corpus)
    sampler = MixtureSampler(shards, {"papers": 1.0}, seq_len, "packed", 0)
    return [next(sampler).input_ids for _ in range(n)]


def run_pmcllama(a, work: Path) -> dict:
    from pmcllama import pretrain
    from pmcllama.training.config import PretrainConfig

    out = pretrain.run(PretrainConfig(
        model=a.model, data=str(work / "corpus"), out=str(work / "pmcllama"), seq_len=a.seq_len,
        micro_batch=a.micro_batch, global_batch=a.global_batch, max_steps=a.steps, lr=2e-5, optimizer={"warmup_steps": 1},
        precision=a.precision, threads=a.threads, mode="packed"), force=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"tokens": rows[-1]["tokens"] - rows[0]["tokens"], "seconds": rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]}


def run_trainer(a, work: Path) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from pmcllama.models import load_model

    torch.set_num_threads(a.threads)
    model, _ = load_model(a.model)
    data = [{"input_ids": torch.from_numpy(w), "labels": torch.from_numpy(w)}
            for w in windows(work / "corpus", a.seq_len, a.steps * a.global_batch)]
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.global_batch // a.micro_batch, max_steps=a.steps, learning_rate=2e-5,
        warmup_steps=1, lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0, adam_beta2=0.95,
        bf16=a.precision == "bf16", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()]).train()
    return {"tokens": (len(marks) - 1) * a.global_batch * a.seq_len, "seconds": marks[-1] - marks[0],
            "optim": args.optim if isinstance(args.optim, str) else args.optim.value}


def side(a) -> None:
    work = Path(a.work)
    result = run_pmcllama(a, work) if a.side == "pmcllama" else run_trainer(a, work)
    report_side(result, "tokens_per_s")


def launch(a, name: str, work: Path) -> dict:
    return run_side(__file__, name, ["--work", str(work), "--model", a.model,
           "--seq-len", str(a.seq_len), "--micro-batch", str(a.micro_batch), "--global-batch", str(a.global_batch),
           "--steps", str(a.steps), "--threads", str(a.threads), "--precision", a.precision], a.threads)


def main(argv=None) -> None:
    a = parse(argv)
    if a.side:
        return side(a)
    if a.global_batch % a.micro_batch or a.steps < 2:
        sys.exit("global batch must be a multiple of micro batch, and steps >= 2")
    import torch

    from pmcllama.models import load_model
    from pmcllama.training.metrics import matmul_peak

    torch.set_num_threads(a.threads)
    peak = matmul_peak(torch.device("cpu"), a.precision, size=1024, seconds=2.0)
    n_params = sum(p.numel() for p in load_model(a.model)[0].parameters())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_corpus(work / "corpus", a.model, (a.steps * a.global_batch + 4) * a.seq_len)
        results = {name: launch(a, name, work) for name in ("pmcllama", "trainer")}
    for r in results.values():
        r["model_flops_per_s"] = 6 * n_params * r["tokens_per_s"]
        r["share_of_matmul_peak"] = r["model_flops_per_s"] / peak
    ratio = results["pmcllama"]["tokens_per_s"] / results["trainer"]["tokens_per_s"]
    report = {"bench": "pretrain", "model": a.model, "parameters": n_params, "seq_len": a.seq_len,
              "micro_batch": a.micro_batch, "global_batch": a.global_batch, "steps": a.steps, "threads": a.threads,
              "precision": a.precision, "matmul_peak_flops_per_s": peak, "results": results,
              "ratio_tokens_per_s": ratio, "target": 1.5}
    save(a.out, report)
    for name, r in results.items():
        print(f"{name:9s} {r['tokens_per_s']:8.1f} tokens/s  {r['share_of_matmul_peak']:6.1%} of the "
              f"{a.precision} matmul peak ({peak / 1e9:.1f} GFLOP/s)  peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"pmcllama / Trainer: {ratio:.2f}x tokens/s (target >= 1.5x)   -> {a.out}")


if __name__ == "__main__":
    main()
