"""Benchmark: `pmcllama corpus` on ../shared/data/corpus replicated to N characters, side by
side with a plain `datasets.map` tokenization (batched, same tokenizer, same processes).

    .venv/bin/python bench/bench_corpus.py                      # ~50M characters, smollm2-135m
    .venv/bin/python bench/bench_corpus.py --chars 5e6 --scales 1 10   # flat-memory check: 5M and 50M
    .venv/bin/python bench/bench_corpus.py --chars 2e6 --tokenizer tiny-llama   # a quick smoke run
    .venv/bin/python bench/bench_corpus.py --small-files 100 --scales 1 10 --skip-datasets   # per-file cost

`--small-files N` writes N small JSONL files (3 documents of 60 words each) per scale step
instead of copying the shared corpus: the corpus stage runs one task per input file, so this
measures what each file costs beyond its text (task start, logs, part folder, merge).

For each scale it builds the corpus in a fresh subprocess (`python -m pmcllama corpus`),
reads its corpus_report.json and reports: tokens, wall time, tokens/s of the tokenize stage
(tokens over the seconds spent in the tokenizer, summed over workers, times workers) and end
to end, and the peak RSS of its largest process (getrusage of a fresh parent's children). Then it tokenizes the same documents
(the kept texts, written to JSONL) with `datasets` `Dataset.map(batched=True, num_proc=workers)`
and prints our tokenize rate / datasets' rate. Dedup is off by default: the input is the same
files copied many times, and dedup would drop the copies before they reach the shards.
Targets (2 cores): >= 1M tokens/min in the tokenize stage, peak RSS < 2 GB at every scale.
Writes bench/results/corpus_<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "corpus"
sys.path.insert(0, str(ROOT / "src"))


def source_chars(folder: Path) -> int:
    """Characters of cleaned text in one copy of the shared corpus (read once)."""
    from pmcllama.data.filters import normalize
    from pmcllama.data.readers import read_file, resolve_paths

    total = 0
    for f in resolve_paths([str(folder)], "auto"):
        total += sum(len(normalize(d.text)) for d in read_file(f, "x") if not d.error and not d.drop)
    return total


def replicate(src: Path, dest: Path, copies: int) -> None:
    for i in range(copies):
        shutil.copytree(src, dest / f"copy{i:04d}", ignore=shutil.ignore_patterns("LICENSE*", "README*"))


MEASURE = """import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)"""


def run_corpus(inp: Path, out: Path, args) -> tuple[dict, float, float]:
    # on_error skip: the shared data holds a record that is not JSON (counted in exclusions.jsonl)
    cfg = {"out": str(out), "tokenizer": args.tokenizer, "workers": args.workers, "dedup": args.dedup,
           "on_error": "skip", "sources": [{"name": "papers", "paths": [str(inp)]}]}
    if not args.dedup:
        cfg["near_dedup"] = None
    path = out.with_suffix(".yaml")
    path.write_text(json.dumps(cfg))
    # a fresh parent per run, so the peak RSS of its children is this run's alone
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "pmcllama", "corpus",
                           "--config", str(path)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"pmcllama corpus failed:\n{proc.stderr[-3000:]}")
    rss_kib = int(proc.stdout.strip().splitlines()[-1])
    report = json.loads((out / "corpus_report.json").read_text())
    return report, wall, rss_kib / 1024  # KiB -> MiB (Linux)


def kept_texts(inp: Path, jsonl: Path) -> int:
    """The same cleaned documents, as JSONL for datasets (count returned)."""
    from pmcllama.data.filters import normalize
    from pmcllama.data.readers import read_file, resolve_paths

    n = 0
    with open(jsonl, "w", encoding="utf-8") as fh:
        for f in resolve_paths([str(inp)], "auto"):
            for d in read_file(f, "x"):
                if not d.error and not d.drop:
                    fh.write(json.dumps({"text": normalize(d.text)}) + "\n")
                    n += 1
    return n


def datasets_map(jsonl: Path, cache: Path, args) -> dict:
    """Tokenize with datasets.map (batched, num_proc=workers), the way many scripts do."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    from pmcllama.models import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    eos = tok.eos_token_id
    ds = datasets.load_dataset("json", data_files=str(jsonl), split="train", cache_dir=str(cache))

    def encode(batch):
        ids = tok(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    t0 = time.perf_counter()
    out = ds.map(encode, batched=True, batch_size=256, num_proc=args.workers if args.workers > 1 else None,
                 remove_columns=["text"], load_from_cache_file=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(x) for x in out["input_ids"])
    return {"tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}


def small_files(dest: Path, n: int) -> None:
    """`n` JSONL files of three 60-word documents each (seeded: the same at every run)."""
    import random

    rng = random.Random(0)
    words = ("the heart pumps blood through arteries and veins of the body while the lungs exchange "
             "oxygen with carbon dioxide in alveoli").split()
    dest.mkdir(parents=True)
    for i in range(n):
        rows = [{"text": " ".join(rng.choice(words) for _ in range(60))} for _ in range(3)]
        (dest / f"f{i:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def bench_scale(scale: int, args, work: Path, per_copy: int) -> dict:
    inp = work / f"input_x{scale}"
    if args.small_files:
        copies = args.small_files * scale  # files, here
        small_files(inp, copies)
    else:
        copies = max(1, -(-int(args.chars * scale) // per_copy))
        replicate(SHARED, inp, copies)
    report, wall, rss_mb = run_corpus(inp, work / f"out_x{scale}", args)
    th = report["throughput"]
    tok_rate = th["tokenize_tokens_per_s_per_worker"] * args.workers
    row = {"scale": scale, "copies": copies, "chars": report["sources"]["papers"]["chars"],
           "documents": report["total"]["documents_kept"], "tokens": report["total"]["tokens"],
           "wall_s": round(wall, 2), "stage_total_s": th["total_s"],
           "tokenize_tokens_per_s": round(tok_rate, 1), "tokenize_tokens_per_min": round(tok_rate * 60),
           "end_to_end_tokens_per_s": round(report["total"]["tokens"] / wall, 1), "peak_rss_mb": round(rss_mb, 1)}
    if not args.skip_datasets and scale == args.scales[0]:
        jsonl = work / "texts.jsonl"
        kept_texts(inp, jsonl)
        row["datasets_map"] = datasets_map(jsonl, work / "hf_cache", args)
        row["ratio_tokenize_vs_datasets_map"] = round(tok_rate / row["datasets_map"]["tokens_per_s"], 2)
        row["ratio_end_to_end_vs_datasets_map"] = round(row["end_to_end_tokens_per_s"] /
                                                        row["datasets_map"]["tokens_per_s"], 2)
    shutil.rmtree(inp)
    shutil.rmtree(work / f"out_x{scale}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chars", type=float, default=50e6, help="characters of input at scale 1 (default 50M)")
    ap.add_argument("--scales", type=int, nargs="+", default=[1], help="input multiples to run, e.g. 1 10")
    ap.add_argument("--workers", type=int, default=2, help="processes (ours and datasets.map's num_proc)")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer (built-in name or folder)")
    ap.add_argument("--dedup", action="store_true", help="keep exact and near dedup on (copies get dropped)")
    ap.add_argument("--skip-datasets", action="store_true", help="do not run the datasets.map comparison")
    ap.add_argument("--small-files", type=int, default=0,
                    help="instead of the shared corpus: this many small JSONL files per scale step")
    ap.add_argument("--tag", default="", help="suffix of bench/results/corpus_<tag>.json")
    args = ap.parse_args()
    if not args.small_files and not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent")
    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as tmp:
        per_copy = 0 if args.small_files else source_chars(SHARED)
        rows = []
        for scale in args.scales:
            row = bench_scale(scale, args, Path(tmp), per_copy)
            rows.append(row)
            print(json.dumps(row))
    result = {"bench": "corpus", "args": vars(args), "chars_per_copy": per_copy, "cpus": os.cpu_count(),
              "runs": rows, "targets": {"tokenize_tokens_per_min": 1_000_000, "peak_rss_mb": 2048}}
    first = rows[0]
    print(f"tokenize stage: {first['tokenize_tokens_per_min']:,} tokens/min "
          f"(target >= 1,000,000); peak RSS {', '.join(str(r['peak_rss_mb']) for r in rows)} MB "
          f"at scales {args.scales} (target < 2048)")
    if "datasets_map" in first:
        print(f"datasets.map: {first['datasets_map']['tokens_per_s']:,} tokens/s; ratio ours/datasets.map: "
              f"tokenize {first['ratio_tokenize_vs_datasets_map']}x, end to end "
              f"{first['ratio_end_to_end_vs_datasets_map']}x")
    out = ROOT / "bench" / "results" / f"corpus_{args.tag or 'latest'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
