"""Parity and speed: `pmcllama evaluate` (mode loglik) vs lm-evaluation-harness on the same
model, questions, thread count and precision, on four item shapes.

lm-eval runs its own HF backend (`lm_eval.models.huggingface.HFLM`) on the local Hugging
Face folder of the model (for smollm2-135m: the dequantised cache that pmcllama.models
resolves), with the task YAMLs of bench/lmeval_tasks/ (lm-eval's own prompt functions and
templates) reading local JSONL written here to a temporary folder in the layouts of lm-eval's
hub copies (never the hub: HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1). The shapes:

- pubmedqa: the first N records of ../shared/data/benchmarks/pubmedqa/ori_pqal_trainval.json
  (PQA-L train/dev with their abstracts, ~320 tokens; the official test split is never read);
- medmcqa: the first N rows of ../shared/data/benchmarks/train/medmcqa_train_subset_340.jsonl
  (MedMCQA train rows, ~60 tokens);
- medqa_4options: the 10 rows of format_samples/medqa_us_4options_sample.jsonl repeated to N
  (~230 tokens);
- mmlu_anatomy: the 10 rows of format_samples/mmlu_anatomy_test_sample.csv repeated to N (~70
  tokens).

A repeated row's r-th copy has " (r)" after its question, so that every prompt is distinct:
lm-eval groups requests with equal contexts across documents into one forward, which would
time 10 questions for N.

pmcllama reads the original layouts with its own loaders, loads the model as `pmcllama
evaluate` does (`evaluate.load_for`: in fp32 on a CPU, oneDNN-prepacked Linear layers) and
scores them with `benchmarks.scoring.evaluate_items` (padding-free, `--max-batch-tokens` per
forward, no question cap); lm-eval with `--lmeval-batch-size` questions per forward (its default
`logits_cache` groups single-token choices into one forward per question; `--no-logits-cache`
gives one sequence per choice). The script checks that every pmcllama prompt is character for
character lm-eval's context, then reports per shape the agreement of the acc predictions,
both accuracies, the largest loglik difference, and questions/s of each. Timed: pmcllama's
`evaluate_items` call (tokenizing included) against lm-eval's `loglikelihood` call (its
tokenizing and scoring, without its task building and metrics), the fastest of `--repeat`
runs of each, the two tools taking turns run by run (ABBA), model loading excluded for both. On
CPU, pmcllama's heap setting (`prepack.keep_freed_memory`, process-wide) is made before either
tool runs, so lm-eval's forwards are spared the same page faults.

Ceiling: the forward input tokens pmcllama runs (one sequence per question for single-token
choices; a prefix common to every prompt, such as MMLU's subject header, once) times 2 x
non-embedding parameters, less the last layer's MLP at the tokens whose output no answer reads
(pmcllama skips it; lm-eval computes it), plus causal attention (QK and AV over the tokens each one sees),
against the matmul peaks measured in the same run: PyTorch's matmul at the
model's own shapes (its q/k/v/o and MLP projections on `--max-batch-tokens` rows), 1024^3
square matmuls, and (CPU, fp32) oneDNN's prepacked products at the fused shapes pmcllama runs
(q/k/v and gate/up as one matrix each), the fastest fp32 product this PyTorch has: on CPUs
where PyTorch's default GEMM does not use the wider vectors oneDNN does (seen on an AMD EPYC
with AVX-512, where it ran at 0.4x oneDNN's rate) a tool can exceed the first two. Each
tool's share of each peak; the CPU's name and extensions are in the result.

    python bench/bench_eval_parity.py --limit 20 --repeat 1      # a quick check
    python bench/bench_eval_parity.py                            # the full run (460 questions, 2 repeats)
    python bench/bench_eval_parity.py --device cuda --precision bf16   # a GPU: lm-eval in bf16

Writes bench/results/eval_parity.json (or --out).
"""
from __future__ import annotations

import argparse
import csv
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
BENCH = SHARED / "benchmarks"
PQA_FILE = BENCH / "pubmedqa" / "ori_pqal_trainval.json"
MEDMCQA_FILE = BENCH / "train" / "medmcqa_train_subset_340.jsonl"
MEDQA_FILE = BENCH / "format_samples" / "medqa_us_4options_sample.jsonl"
MMLU_FILE = BENCH / "format_samples" / "mmlu_anatomy_test_sample.csv"
# shape -> (lm-eval task, pmcllama format, default N)
SHAPES = {"pubmedqa": ("pubmedqa_local", "pubmedqa", 80), "medmcqa": ("medmcqa_local", "medmcqa", 150),
          "medqa_4options": ("medqa_4options_local", "medqa", 80),
          "mmlu_anatomy": ("mmlu_anatomy_local", "mmlu", 150)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="pmcllama model name or HF folder")
    p.add_argument("--limit", type=int, default=None,
                   help="questions per shape (default: " + ", ".join(f"{k} {v[2]}" for k, v in SHAPES.items())
                   + "; medmcqa at most 340)")
    p.add_argument("--tasks", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both")
    p.add_argument("--max-batch-tokens", type=int, default=2048, help="pmcllama: model-input tokens per forward")
    p.add_argument("--lmeval-batch-size", "--batch-size", type=int, default=8, help="lm-eval: questions per forward")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both tools)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 for parity; bf16: pmcllama autocasts, lm-eval loads bfloat16 weights")
    p.add_argument("--repeat", type=int, default=2,
                   help="time each tool this many times and keep the fastest (noisy machines)")
    p.add_argument("--no-logits-cache", action="store_true",
                   help="run lm-eval with logits_cache=False (one sequence per choice, lm-eval's "
                   "behaviour before 0.4.2) instead of its default context sharing")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_parity.json"))
    return p.parse_args(argv)


def _repeat_to(rows: list, n: int, question) -> list:
    """rows repeated to n, copy r > 0 with " (r)" after its question: distinct prompts, so
    neither tool can reuse one forward for several questions (lm-eval groups equal contexts)."""
    out = []
    for i in range(n):
        r, row = divmod(i, len(rows))
        out.append(question(rows[row], f" ({r})") if r else rows[row])
    return out


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def source_rows(shape: str, n: int) -> tuple[list, Path]:
    """The shape's first n source records (the format samples repeated) and the original file."""
    if shape == "pubmedqa":
        return list(json.loads(PQA_FILE.read_text(encoding="utf-8")).items())[:n], PQA_FILE
    if shape == "mmlu_anatomy":
        with open(MMLU_FILE, newline="", encoding="utf-8") as f:
            return _repeat_to([r for r in csv.reader(f) if r], n, lambda r, tag: [r[0] + tag, *r[1:]]), MMLU_FILE
    path = MEDMCQA_FILE if shape == "medmcqa" else MEDQA_FILE
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if shape == "medmcqa":
        return rows[:n], path
    return _repeat_to(rows, n, lambda r, tag: {**r, "question": r["question"] + tag}), path


def write_pmcllama_file(tmp: Path, shape: str, rows: list) -> Path:
    if shape == "pubmedqa":
        path = tmp / "ori_pqal_part.json"
        path.write_text(json.dumps(dict(rows)), encoding="utf-8")
        return path
    if shape == "mmlu_anatomy":
        path = tmp / "anatomy_part.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
        return path
    return _write_jsonl(tmp / f"{shape}_part.jsonl", rows)


def lmeval_doc(shape: str, row, item_id: str) -> dict:
    """One source record in the layout of lm-eval's hub copy of the task, with pmcllama's id."""
    if shape == "pubmedqa":
        rec = row[1]
        return {"id": item_id, "QUESTION": rec["QUESTION"], "CONTEXTS": rec["CONTEXTS"],
                "final_decision": rec["final_decision"]}
    if shape == "medmcqa":
        cop = int(row["cop"])
        return {"id": item_id, **{k: row[k] for k in ("question", "opa", "opb", "opc", "opd")}, "cop": cop - 1}
    if shape == "mmlu_anatomy":
        return {"id": item_id, "question": row[0], "choices": row[1:5], "answer": "ABCD".index(row[5].strip())}
    o = row["options"]
    return {"id": item_id, "sent1": row["question"], "ending0": o["A"], "ending1": o["B"], "ending2": o["C"],
            "ending3": o["D"], "label": "ABCD".index(row["answer_idx"])}


def write_data(tmp: Path, shapes: list[str], limit: int | None) -> dict:
    """Per shape: pmcllama's items (read from the original layout) and lm-eval's task files."""
    from pmcllama.benchmarks import load_benchmark

    items = {}
    for shape in shapes:
        task, fmt, default = SHAPES[shape]
        rows, _ = source_rows(shape, limit or default)
        loaded = load_benchmark(fmt, write_pmcllama_file(tmp, shape, rows),
                                **({"subject": "anatomy"} if fmt == "mmlu" else {}))
        assert len(loaded.items) == len(rows), f"{shape}: {len(rows)} rows but {len(loaded.items)} items"
        items[shape] = loaded.items
        _write_jsonl(tmp / f"{shape}.jsonl", [lmeval_doc(shape, r, it.id) for r, it in zip(rows, loaded.items)])
        text = (TASKS_DIR / f"{task}.yaml").read_text(encoding="utf-8").replace("__DATA_DIR__", str(tmp))
        (tmp / f"{task}.yaml").write_text(text, encoding="utf-8")
    shutil.copy(TASKS_DIR / "lmeval_prompts.py", tmp / "lmeval_prompts.py")
    return items


def lmeval_runner(folder: Path, tmp: Path, args):
    """lm-eval's HFLM on the model; returns run(shape) -> (per-question results, seconds of its
    loglikelihood call)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(folder), dtype="bfloat16" if args.precision == "bf16" else "float32",
              device=args.device, batch_size=args.lmeval_batch_size, logits_cache=not args.no_logits_cache)
    timed, inner = [0.0], lm.loglikelihood

    def loglikelihood(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            timed[0] += time.perf_counter() - t0

    lm.loglikelihood = loglikelihood
    tm = TaskManager(include_path=str(tmp))

    def run(shape: str) -> tuple[list[dict], float]:
        task = SHAPES[shape][0]
        timed[0] = 0.0
        out = simple_evaluate(model=lm, tasks=[task], task_manager=tm, num_fewshot=0, log_samples=True,
                              bootstrap_iters=0)
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        return [{"id": s["doc"]["id"], "prompt": s["arguments"][0][0] if isinstance(
            s["arguments"][0], (list, tuple)) else None,
            "loglik": [float(r[0]) for r in s["filtered_resps"]], "acc": s["acc"],
            "acc_norm": s.get("acc_norm")} for s in samples], round(timed[0], 3)

    return run


def pmcllama_runner(folder: Path, items: dict, args):
    """The model as `pmcllama evaluate` loads it (fp32 on a CPU: oneDNN-prepacked Linear
    layers); returns run(shape) -> (records, seconds of its evaluate_items call), and work()
    -> what it computes per shape."""
    import torch

    from pmcllama.benchmarks.scoring import evaluate_items
    from pmcllama.evaluate import load_for

    model, tok = load_for(folder, "loglik", args.precision, device=args.device)
    warm: set[str] = set()

    def run(shape: str) -> tuple[list[dict], float]:
        its = items[shape]
        if shape not in warm:
            evaluate_items(model, tok, its[:2], precision=args.precision, progress=False)
            warm.add(shape)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        recs = evaluate_items(model, tok, its, precision=args.precision, progress=False,
                              max_batch_tokens=args.max_batch_tokens)
        return recs, round(time.perf_counter() - t0, 3)

    return run, lambda: {shape: work(model, tok, its) for shape, its in items.items()}


def work(model, tok, items) -> dict:
    """What pmcllama runs: forward input tokens (a prefix common to every prompt once, each
    question's shared context once), 2 x non-embedding parameters FLOPs per token, less the
    last layer's MLP at the tokens no answer reads (`scoring._last_layer_at`: it runs at each
    question's distinct scored positions only), and causal attention FLOPs."""
    from pmcllama.benchmarks.packed import layout, shared_prefix
    from pmcllama.benchmarks.scoring import build_requests, context_length
    from pmcllama.prepack import DECODER_LAYERS

    import torch
    from transformers import AutoModelForCausalLM

    cfg = model.config
    requests = build_requests(tok, items, context_length(model, tok))
    skip = shared_prefix(requests)
    qs = [layout(reqs, skip) for reqs in requests]
    tokens = skip + sum(q.tokens for q in qs)
    with torch.device("meta"):  # the parameters as declared (prepacked layers hold plain tensors)
        ref = AutoModelForCausalLM.from_config(cfg)
    embedding = {id(ref.get_input_embeddings().weight), id(ref.get_output_embeddings().weight)}
    body = sum(p.numel() for p in ref.parameters() if id(p) not in embedding)
    width = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    pairs = skip * (skip + 1) / 2 + sum(
        len(q.context) * (skip + (len(q.context) + 1) / 2)
        + sum(len(t) * (skip + len(q.context)) + len(t) * (len(t) + 1) / 2 for t in q.tails) for q in qs)
    # a question's prompt's last position, then one per token of each distinct choice tail
    scored = sum(1 + sum(len(inp) - (len(reqs[0].inp) - len(reqs[0].cont) + 1) for inp in {r.inp for r in reqs})
                 for reqs in requests)
    last = ref.get_decoder().layers[-1]
    mlp = sum(p.numel() for p in last.mlp.parameters()) if type(last).__name__ in DECODER_LAYERS else 0
    skipped = 2.0 * mlp * (tokens - skip - scored)
    return {"forward_tokens": tokens, "shared_prefix_tokens": skip, "non_embedding_parameters": body,
            "scored_positions": scored, "skipped_last_mlp_flops": skipped, "body_flops": 2.0 * body * tokens - skipped,
            "attention_flops": 4.0 * width * cfg.num_hidden_layers * pairs}


def model_shape_peak(model_cfg, device, precision: str, rows: int, seconds: float = 2.0,
                     onednn: bool = False) -> float:
    """Best FLOP/s of one layer's products on `rows` tokens: PyTorch's matmul over the projections
    (q, k, v, o, gate, up, down), or with `onednn` the products pmcllama runs on a CPU in fp32,
    oneDNN's over prepacked weights with q/k/v and gate/up fused (`pmcllama.prepack`)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    d, f = model_cfg.hidden_size, model_cfg.intermediate_size
    heads, kv = model_cfg.num_attention_heads, model_cfg.num_key_value_heads
    hd = getattr(model_cfg, "head_dim", d // heads)
    if onednn:
        from pmcllama.prepack import PackedLinear

        shapes = [(d, (heads + 2 * kv) * hd), (heads * hd, d), (d, 2 * f), (f, d)]
        mats = [(torch.randn(rows, k), PackedLinear(torch.randn(n, k), None, rows)) for k, n in shapes]

        def product(a, layer):
            return layer(a)
    else:
        shapes = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, f), (d, f), (f, d)]
        mats = [(torch.randn(rows, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype))
                for k, n in shapes]

        def product(a, b):
            return a @ b
    flops = sum(2 * rows * k * n for k, n in shapes)
    best, t_end = 0.0, time.perf_counter() + seconds
    for i in range(200):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for a, b in mats:
            product(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, flops / (time.perf_counter() - t0))
        if i >= 3 and time.perf_counter() > t_end:
            break
    return best


def cpu_description() -> str:
    """The CPU's model name, family/model and its wide-vector and matrix extensions (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return __import__("platform").processor() or "unknown"
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    ext = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model "
            f"{fields.get('model', '?')}; {', '.join(ext) or 'no AVX2'})")


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


def speed(shape_items: int, ours: list[float], theirs: list[float], done: dict, peaks: dict) -> dict:
    """questions/s of each, the ratio, and each tool's share of the two peaks."""
    s_ours, s_theirs = min(ours), min(theirs)
    useful = done["body_flops"] + done["attention_flops"]
    return {"pmcllama_seconds": s_ours, "lmeval_seconds": s_theirs, "pmcllama_seconds_runs": ours,
            "lmeval_seconds_runs": theirs, "pmcllama_q_per_s": round(shape_items / s_ours, 3),
            "lmeval_q_per_s": round(shape_items / s_theirs, 3), "speed_ratio": round(s_theirs / s_ours, 2),
            **done, **{f"{tool}_share_of_{name}": round(useful / sec / peak, 3)
                       for tool, sec in (("pmcllama", s_ours), ("lmeval", s_theirs)) for name, peak in peaks.items()}}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from pmcllama.models import resolve
    from pmcllama.prepack import keep_freed_memory
    from pmcllama.training.metrics import matmul_peak

    shapes = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in shapes if t not in SHAPES]
    if unknown or not shapes:
        sys.exit(f"unknown task(s) {unknown}; known: {', '.join(SHAPES)}")
    for f in (PQA_FILE, MEDMCQA_FILE, MEDQA_FILE, MMLU_FILE):
        if not f.is_file():
            sys.exit(f"missing {f} (set PMCLLAMA_SHARED_DATA)")
    torch.set_num_threads(args.threads)
    # pmcllama's scoring keeps freed memory in glibc's heap, process-wide: in force from the start,
    # lm-eval's runs in this process have it as well as pmcllama's
    kept_heap = args.device == "cpu" and keep_freed_memory()
    folder = resolve(args.model)
    with tempfile.TemporaryDirectory(prefix="pmcllama-parity-") as d:
        tmp = Path(d)
        items = write_data(tmp, shapes, args.limit)
        runners = {"pmcllama": pmcllama_runner(folder, items, args), "lmeval": (lmeval_runner(folder, tmp, args), None)}
        got: dict = {"pmcllama": {}, "lmeval": {}}
        runs: dict = {"pmcllama": {}, "lmeval": {}}
        # the tools take turns run by run, the first of a round alternating (ABBA), so that a
        # machine whose speed drifts over minutes (a shared host) slows both alike
        for shape in shapes:
            for r in range(max(1, args.repeat)):
                for tool in ("pmcllama", "lmeval")[:: 1 if r % 2 == 0 else -1]:
                    got[tool][shape], sec = runners[tool][0](shape)
                    runs[tool].setdefault(shape, []).append(sec)
        ours, theirs, runs_ours, runs_theirs = got["pmcllama"], got["lmeval"], runs["pmcllama"], runs["lmeval"]
        done = runners["pmcllama"][1]()
    from transformers import AutoConfig

    device = torch.device(args.device)
    model_cfg, rows = AutoConfig.from_pretrained(folder), min(args.max_batch_tokens, 2048)
    peaks = {"model_shape_peak": model_shape_peak(model_cfg, device, args.precision, rows),
             "square_peak": matmul_peak(device, args.precision, size=1024, seconds=2.0)}
    if device.type == "cpu" and args.precision == "fp32" and torch.backends.mkldnn.is_available():
        peaks["onednn_model_shape_peak"] = model_shape_peak(model_cfg, device, "fp32", rows, onednn=True)
    per_task = {t: {**compare(ours[t], items[t], theirs[t]),
                    **speed(len(items[t]), runs_ours[t], runs_theirs[t], done[t], peaks)} for t in shapes}
    n = sum(len(v) for v in ours.values())
    total_ours = sum(min(runs_ours[t]) for t in shapes)
    total_theirs = sum(min(runs_theirs[t]) for t in shapes)
    agree = sum(per_task[t]["agreement_acc"] * per_task[t]["n"] for t in shapes) / n
    result = {
        "model": args.model, "model_folder": str(folder), "threads": args.threads, "device": args.device,
        "cpu": cpu_description(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": args.precision,
        "max_batch_tokens": args.max_batch_tokens, "lmeval_batch_size": args.lmeval_batch_size,
        "limit": args.limit, "repeat": args.repeat, "lm_eval_version": __import__("lm_eval").__version__,
        "lmeval_logits_cache": not args.no_logits_cache, "peaks_flops_per_s": peaks, "tasks": per_task,
        "questions": n, "agreement_acc": agree, "pmcllama_seconds": round(total_ours, 3),
        "lmeval_seconds": round(total_theirs, 3), "pmcllama_q_per_s": round(n / total_ours, 3),
        "lmeval_q_per_s": round(n / total_theirs, 3), "speed_ratio": round(total_theirs / total_ours, 2),
        "load_average_1min": os.getloadavg()[0], "heap_keeps_freed_memory_for_both": kept_heap,
        "note": "seconds per shape: fastest of `repeat` runs; pmcllama: its evaluate_items call; lm-eval: "
                "its loglikelihood call (tokenizing and scoring; task building and metrics left out); model "
                "loading excluded for both; shares of peak count 2 x non-embedding parameters per forward "
                "token plus causal attention",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    report(result, args)
    return 0


def report(result: dict, args) -> None:
    for t, r in result["tasks"].items():
        print(f"{t}: n={r['n']} prompts identical {r['prompts_identical']}/{r['n']}  "
              f"agreement {100 * r['agreement_acc']:.1f}%  acc pmcllama {100 * r['acc_pmcllama']:.1f} "
              f"lm-eval {100 * r['acc_lmeval']:.1f}  max |dloglik| {r['max_abs_loglik_diff']:.1e}  "
              f"pmcllama {r['pmcllama_q_per_s']} q/s, lm-eval {r['lmeval_q_per_s']} q/s -> {r['speed_ratio']}x; "
              f"share of the model-shape matmul peak: pmcllama {100 * r['pmcllama_share_of_model_shape_peak']:.0f}%"
              f", lm-eval {100 * r['lmeval_share_of_model_shape_peak']:.0f}%"
              + (f"; of oneDNN's: pmcllama {100 * r['pmcllama_share_of_onednn_model_shape_peak']:.0f}%, lm-eval "
                 f"{100 * r['lmeval_share_of_onednn_model_shape_peak']:.0f}%"
                 if "pmcllama_share_of_onednn_model_shape_peak" in r else ""))
    peaks = result["peaks_flops_per_s"]
    print(f"all: {result['questions']} questions, agreement {100 * result['agreement_acc']:.1f}%; pmcllama "
          f"{result['pmcllama_q_per_s']} q/s, lm-eval {result['lmeval_q_per_s']} q/s -> {result['speed_ratio']}x "
          f"({args.threads} threads, {args.device} {result['cpu_capability']}, {args.precision}, pmcllama "
          f"max_batch_tokens {args.max_batch_tokens}, lm-eval batch {args.lmeval_batch_size}); matmul peak "
          f"{peaks['model_shape_peak'] / 1e9:.1f} GFLOP/s at the model's shapes, "
          f"{peaks['square_peak'] / 1e9:.1f} GFLOP/s square"
          + (f", oneDNN's {peaks['onednn_model_shape_peak'] / 1e9:.1f} GFLOP/s at the model's fused shapes"
             if "onednn_model_shape_peak" in peaks else "")
          + f"; {result['cpu']}; load average {result['load_average_1min']:.1f}; wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
