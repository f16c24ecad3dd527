"""Export cost and what the exported files run at: `pmcllama export` time and peak RSS for
smollm2-135m at f16 and q8_0, then llama.cpp (xllamacpp, in process) prompt and generation
tokens/s on those files beside transformers (fp32, the source model) on the same prompt and threads.

Each side runs in its own fresh process (bench/_sides.py): an export side's peak RSS is the whole
process (Python, torch, the tokenizer and the tensors in flight); the target is under 2x the f16
file. Generation is greedy, `--max-tokens` new tokens with end-of-sequence ignored, after a
~200-token medical prompt; the prompt rate is the prompt's tokens / the time to process them.
Results go to bench/results/export.json.

    python bench/bench_export.py --threads 2 --max-tokens 64
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _sides import launch, report_side, save  # noqa: E402

MODEL = "smollm2-135m"
PROMPT = ("A 64-year-old man with type 2 diabetes and hypertension presents with crushing chest pain "
          "radiating to the left arm for two hours. The electrocardiogram shows ST-segment elevation in "
          "leads II, III and aVF, consistent with an inferior myocardial infarction. He receives aspirin, "
          "a P2Y12 inhibitor and heparin, and is taken for primary percutaneous coronary intervention. "
          "Metformin is held before contrast; beta-blockers and a high-intensity statin are started. "
          "Two days later he develops new shortness of breath and a holosystolic murmur at the apex. "
          "Question: what is the most likely complication, and how should it be investigated? Answer:")


def side_export(dtype: str, out: str) -> None:
    from pmcllama.export import export_gguf
    from pmcllama.models import resolve

    resolve(MODEL)  # the cached HF folder, built before timing
    t0 = time.perf_counter()
    export_gguf(MODEL, Path(out), dtype, force=True, say=lambda s: None)
    seconds = time.perf_counter() - t0
    size = Path(out).stat().st_size
    report_side({"side": f"export-{dtype}", "seconds": round(seconds, 2), "tokens": 1,
                 "file_mib": round(size / 2**20, 1)}, "exports_per_s")


def side_llamacpp(path: str, threads: int, max_tokens: int) -> None:
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = path
    params.n_ctx = 1024
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    server = xlc.Server(params)
    request = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    server.handle_completions({**request, "max_tokens": 1})  # warm up
    out = server.handle_completions(request)
    t = out["timings"]
    report_side({"side": f"llama.cpp {Path(path).stem}", "prompt_tokens": t["prompt_n"],
                 "prompt_tokens_per_s": round(t["prompt_per_second"], 1), "tokens": t["predicted_n"],
                 "seconds": t["predicted_ms"] / 1000}, "gen_tokens_per_s")


def side_transformers(threads: int, max_tokens: int) -> None:
    import torch

    from pmcllama.models import load_model

    torch.set_num_threads(threads)
    model, tok = load_model(MODEL)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(ids[:, :8])  # warm up
        t0 = time.perf_counter()
        model(ids)
        prompt_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        gen_s = time.perf_counter() - t0 - prompt_s  # generate also processes the prompt once
    report_side({"side": "transformers fp32", "prompt_tokens": ids.shape[1],
                 "prompt_tokens_per_s": round(ids.shape[1] / prompt_s, 1), "tokens": out.shape[1] - ids.shape[1],
                 "seconds": gen_s}, "gen_tokens_per_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "export.json"))
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side == "export":
        return side_export(*a.args)
    if a.side == "llamacpp":
        return side_llamacpp(a.args[0], a.threads, a.max_tokens)
    if a.side == "transformers":
        return side_transformers(a.threads, a.max_tokens)
    script, common = str(Path(__file__).resolve()), ["--threads", str(a.threads), "--max-tokens", str(a.max_tokens)]
    with tempfile.TemporaryDirectory() as tmp:
        exports, runs = {}, []
        for dtype in ("f16", "q8_0"):
            path = os.path.join(tmp, f"{MODEL}-{dtype}.gguf")
            exports[dtype] = launch(script, "export", [*common, dtype, path], 1)
            exports[dtype]["rss_over_f16_file"] = round(exports[dtype]["peak_rss_mib"] / exports.get(
                "f16", exports[dtype])["file_mib"], 2)
            print(json.dumps(exports[dtype]), flush=True)
        for dtype in ("f16", "q8_0"):
            runs.append(launch(script, "llamacpp", [*common, os.path.join(tmp, f"{MODEL}-{dtype}.gguf")], a.threads))
            print(json.dumps(runs[-1]), flush=True)
    runs.append(launch(script, "transformers", common, a.threads))
    print(json.dumps(runs[-1]), flush=True)
    save(a.out, {"model": MODEL, "threads": a.threads, "max_tokens": a.max_tokens, "cpu": platform.processor()
                 or platform.machine(), "cpus": os.cpu_count(), "exports": exports, "runs": runs,
                 "command": "python bench/bench_export.py " + " ".join(common)})


if __name__ == "__main__":
    main()
