"""Parity and speed: `pmcllama evaluate` (mode loglik) vs lm-evaluation-harness on the same
model, questions, thread count and precision (fp32).

lm-eval runs its own HF backend (`lm_eval.models.huggingface.HFLM`) on the local Hugging
Face folder of the model (for smollm2-135m: the dequantised cache that pmcllama.models
resolves), with the task YAMLs of bench/lmeval_tasks/: lm-eval's `pubmedqa` and
`medqa_4options` tasks with lm-eval's own prompt functions, reading local JSONL written
here to a temporary folder (never the hub: HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1):

- pubmedqa: the first N records of ../shared/data/benchmarks/pubmedqa/ori_pqal_trainval.json
  (PQA-L train/dev; the official test split is never read);
- medqa_4options: ../shared/data/benchmarks/format_samples/medqa_us_4options_sample.jsonl,
  rewritten in the layout of lm-eval's hub copy (sent1, ending0..3, label).

pmcllama reads the original files with its own loaders and scores them with
`benchmarks.scoring.evaluate_items`. The script checks that every pmcllama prompt is
character-for-character lm-eval's `doc_to_text`, then reports per-question agreement of
the acc predictions (argmax of summed logliks) and of acc_norm, the accuracy difference,
the largest loglik difference, and questions/s of each (model loading excluded for both).

Speed: lm-eval 0.4.13 already scores single-token choices (" A".." D", " yes"/" no"/
" maybe") with one forward per question (`logits_cache`, requests grouped by context), so
both tools run the same transformer work; pmcllama saves the output layer and the
full-vocabulary log-softmax at every position (it computes them only where a choice token
is predicted) and the attention mask. `--no-logits-cache` times lm-eval with one sequence
per choice instead (its behaviour with logits_cache=False).

Ceiling: the script counts the tokens of the forward inputs both tools run (one per question
for single-token choices), takes 2 x non-embedding parameters FLOPs per token (a lower bound
of the transformer work: attention scores and the output layer left out), measures the fp32
matmul peak with the same threads, and reports each tool's share of it and the speed-up over
lm-eval that a scorer doing that work at the peak would reach (`ceiling_ratio_vs_lmeval`).

    .venv/bin/python bench/bench_eval_parity.py --limit 20
    .venv/bin/python bench/bench_eval_parity.py --limit 100 --repeat 2   # ~8 min on 2 idle cores

Writes bench/results/eval_parity.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = Path(__file__).resolve().parent / "lmeval_tasks"
SHARED = Path(os.environ.get("PMCLLAMA_SHARED_DATA", ROOT.parent / "shared" / "data"))
PQA_FILE = SHARED / "benchmarks" / "pubmedqa" / "ori_pqal_trainval.json"
MEDQA_FILE = SHARED / "benchmarks" / "format_samples" / "medqa_us_4options_sample.jsonl"
TASKS = {"pubmedqa": "pubmedqa_local", "medqa_4options": "medqa_4options_local"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="pmcllama model name or HF folder")
    p.add_argument("--limit", type=int, default=50,
                   help="questions per benchmark (size option; MedQA sample has 10)")
    p.add_argument("--tasks", default="pubmedqa,medqa_4options", help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both")
    p.add_argument("--batch-size", type=int, default=8, help="batch size for both")
    p.add_argument("--repeat", type=int, default=1,
                   help="time each tool this many times and keep the fastest (noisy machines)")
    p.add_argument("--no-logits-cache", action="store_true",
                   help="run lm-eval with logits_cache=False (one sequence per choice, lm-eval's "
                   "behaviour before 0.4.2) instead of its default context sharing")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_parity.json"))
    return p.parse_args(argv)


def write_data(tmp: Path, limit: int) -> dict[str, Path]:
    """JSONL for lm-eval (its hub layouts) + the original files cut to `limit` for pmcllama."""
    pqa = json.loads(PQA_FILE.read_text(encoding="utf-8"))
    pqa = dict(list(pqa.items())[:limit])
    (tmp / "ori_pqal_part.json").write_text(json.dumps(pqa), encoding="utf-8")
    with open(tmp / "pubmedqa.jsonl", "w", encoding="utf-8") as f:
        for pmid, rec in pqa.items():
            f.write(json.dumps({"id": pmid, "QUESTION": rec["QUESTION"], "CONTEXTS": rec["CONTEXTS"],
                                "final_decision": rec["final_decision"]}) + "\n")
    rows = [json.loads(x) for x in MEDQA_FILE.read_text(encoding="utf-8").splitlines() if x.strip()][:limit]
    (tmp / "medqa_part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with open(tmp / "medqa_4options.jsonl", "w", encoding="utf-8") as f:
        for k, r in enumerate(rows, 1):
            o = r["options"]
            f.write(json.dumps({"id": f"line-{k}", "sent1": r["question"], "ending0": o["A"],
                                "ending1": o["B"], "ending2": o["C"], "ending3": o["D"],
                                "label": "ABCD".index(r["answer_idx"])}) + "\n")
    for name in ("pubmedqa_local.yaml", "medqa_4options_local.yaml"):
        text = (TASKS_DIR / name).read_text(encoding="utf-8").replace("__DATA_DIR__", str(tmp))
        (tmp / name).write_text(text, encoding="utf-8")
    shutil.copy(TASKS_DIR / "lmeval_prompts.py", tmp / "lmeval_prompts.py")
    return {"pubmedqa": tmp / "ori_pqal_part.json", "medqa_4options": tmp / "medqa_part.jsonl"}


def run_lmeval(folder: Path, tmp: Path, tasks: list[str], batch_size: int, repeat: int,
               logits_cache: bool) -> tuple[dict, list[float]]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=batch_size,
              logits_cache=logits_cache)
    tm = TaskManager(include_path=str(tmp))
    seconds = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = simple_evaluate(model=lm, tasks=[TASKS[t] for t in tasks], task_manager=tm, num_fewshot=0,
                              log_samples=True, bootstrap_iters=0)
        seconds.append(round(time.perf_counter() - t0, 3))
    per_task = {}
    for t in tasks:
        samples = sorted(out["samples"][TASKS[t]], key=lambda s: s["doc_id"])
        per_task[t] = [{"id": s["doc"]["id"], "prompt": s["arguments"][0][0] if isinstance(
            s["arguments"][0], (list, tuple)) else None,
            "loglik": [float(r[0]) for r in s["filtered_resps"]], "acc": s["acc"],
            "acc_norm": s.get("acc_norm")} for s in samples]
    return per_task, seconds


def run_pmcllama(folder: Path, files: dict[str, Path], tasks: list[str], batch_size: int,
                 repeat: int) -> tuple[dict, dict, list[float]]:
    from pmcllama.benchmarks import load_benchmark
    from pmcllama.benchmarks.scoring import evaluate_items
    from pmcllama.models import load_model

    model, tok = load_model(folder)
    loaded = {"pubmedqa": load_benchmark("pubmedqa", files["pubmedqa"]) if "pubmedqa" in tasks else None,
              "medqa_4options": load_benchmark("medqa", files["medqa_4options"])
              if "medqa_4options" in tasks else None}
    per_task, seconds = {}, []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for t in tasks:
            per_task[t] = evaluate_items(model, tok, loaded[t].items, batch_size=batch_size, progress=False)
        seconds.append(round(time.perf_counter() - t0, 3))
    return per_task, {t: loaded[t].items for t in tasks}, seconds, work(model, tok, [loaded[t].items for t in tasks])


def work(model, tok, item_lists) -> dict:
    """Forward input tokens (distinct model inputs per question) and 2 x non-embedding params FLOPs."""
    from pmcllama.benchmarks.scoring import build_requests, context_length

    max_length = context_length(model, tok)
    tokens = sum(len(inp) for items in item_lists for reqs in build_requests(tok, items, max_length)
                 for inp in {r.inp for r in reqs})
    embedding = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    body = sum(p.numel() for p in model.parameters() if id(p) not in embedding)
    return {"forward_tokens": tokens, "non_embedding_parameters": body, "body_flops": 2.0 * body * tokens}


def compare(ours: list[dict], items, theirs: list[dict]) -> dict:
    assert [r["id"] for r in ours] == [s["id"] for s in theirs], "question order differs"
    prompts_equal = sum(it.prompt == s["prompt"] for it, s in zip(items, theirs))
    agree = agree_norm = 0
    max_diff = 0.0
    for r, s in zip(ours, theirs):
        ll = s["loglik"]
        pred = max(range(len(ll)), key=lambda j: (ll[j], -j))
        agree += pred == r["pred"]
        agree_norm += (s["acc_norm"] == 1.0) == r["correct_norm"] if s["acc_norm"] is not None else 0
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(ll, r["loglik"])))
    n = len(ours)
    acc_ours = sum(r["correct"] for r in ours) / n
    acc_theirs = sum(s["acc"] for s in theirs) / n
    return {
        "n": n, "prompts_identical": prompts_equal,
        "agreement_acc": agree / n, "agreement_acc_norm_correctness": agree_norm / n,
        "acc_pmcllama": acc_ours, "acc_lmeval": acc_theirs,
        "acc_diff_points": round(100 * (acc_ours - acc_theirs), 3),
        "max_abs_loglik_diff": max_diff,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from pmcllama.models import resolve

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        sys.exit(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    for f in (PQA_FILE, MEDQA_FILE):
        if not f.is_file():
            sys.exit(f"missing {f} (set PMCLLAMA_SHARED_DATA)")
    torch.set_num_threads(args.threads)
    folder = resolve(args.model)
    with tempfile.TemporaryDirectory(prefix="pmcllama-parity-") as d:
        tmp = Path(d)
        files = write_data(tmp, args.limit)
        ours, items, runs_ours, done = run_pmcllama(folder, files, tasks, args.batch_size, args.repeat)
        theirs, runs_theirs = run_lmeval(folder, tmp, tasks, args.batch_size, args.repeat,
                                         not args.no_logits_cache)
    s_ours, s_theirs = min(runs_ours), min(runs_theirs)
    from pmcllama.training.metrics import matmul_peak

    peak = matmul_peak(torch.device("cpu"), "fp32", size=1024, seconds=2.0)
    ceiling = {**done, "matmul_peak_flops_per_s": peak,
               "pmcllama_share_of_peak": round(done["body_flops"] / s_ours / peak, 3),
               "lmeval_share_of_peak": round(done["body_flops"] / s_theirs / peak, 3),
               "ceiling_ratio_vs_lmeval": round(s_theirs / (done["body_flops"] / peak), 2)}
    n = sum(len(v) for v in ours.values())
    per_task = {t: compare(ours[t], items[t], theirs[t]) for t in tasks}
    agree = sum(per_task[t]["agreement_acc"] * per_task[t]["n"] for t in tasks) / n
    result = {
        "model": args.model, "model_folder": str(folder), "threads": args.threads,
        "batch_size": args.batch_size, "precision": "fp32", "limit": args.limit, "repeat": args.repeat,
        "lm_eval_version": __import__("lm_eval").__version__,
        "lmeval_logits_cache": not args.no_logits_cache, "tasks": per_task,
        "questions": n, "agreement_acc": agree,
        "pmcllama_seconds": s_ours, "lmeval_seconds": s_theirs,
        "pmcllama_seconds_runs": runs_ours, "lmeval_seconds_runs": runs_theirs,
        "pmcllama_q_per_s": round(n / s_ours, 3), "lmeval_q_per_s": round(n / s_theirs, 3),
        "speed_ratio": round(s_theirs / s_ours, 2), "ceiling": ceiling,
        "note": "seconds: fastest of `repeat` runs each (the first run of each pays one-off "
                "warm-up); lm-eval seconds include its request building and metric aggregation; "
                "model loading excluded for both",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for t, r in per_task.items():
        print(f"{t}: n={r['n']} prompts identical {r['prompts_identical']}/{r['n']}  "
              f"agreement {100 * r['agreement_acc']:.1f}%  acc pmcllama {100 * r['acc_pmcllama']:.1f} "
              f"lm-eval {100 * r['acc_lmeval']:.1f} (diff {r['acc_diff_points']:+.2f} pts)  "
              f"max |dloglik| {r['max_abs_loglik_diff']:.2e}")
    print(f"all: {n} questions, agreement {100 * agree:.1f}%; pmcllama {result['pmcllama_q_per_s']} q/s, "
          f"lm-eval {result['lmeval_q_per_s']} q/s -> {result['speed_ratio']}x "
          f"({args.threads} threads, fp32, batch {args.batch_size}, lm-eval logits_cache="
          f"{not args.no_logits_cache}; runs pmcllama {runs_ours} s, lm-eval {runs_theirs} s); wrote {args.out}")
    print(f"work: {done['forward_tokens']} forward tokens, {done['body_flops'] / 1e12:.2f} TFLOP (2 x "
          f"{done['non_embedding_parameters'] / 1e6:.1f}M non-embedding params per token); fp32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s: pmcllama at {100 * ceiling['pmcllama_share_of_peak']:.0f}%, lm-eval at "
          f"{100 * ceiling['lmeval_share_of_peak']:.0f}%; at the peak a scorer would be "
          f"{ceiling['ceiling_ratio_vs_lmeval']}x lm-eval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
