"""One decoding step of the generation engine with the model's Linear layers as PyTorch leaves
them and prepacked for oneDNN (`pmcllama.prepack`), in one process, interleaved.

Both copies of the model are loaded side by side; for each batch size B, B identical chat
requests are admitted, a few steps warm up, then `--steps` decoding steps are timed, plain and
prepacked in turn, `--rounds` times. Reported: the median milliseconds per step of each and
their ratio, and whether the two gave the same greedy tokens. Results go to
bench/results/prepack.json.

    python bench/bench_prepack.py --batches 1 8 32 --threads 2
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def step_ms(model, tok, prompt: list[int], batch: int, steps: int) -> tuple[float, list[list[int]]]:
    """Median ms of `steps` decoding steps at `batch` rows, and the rows' tokens."""
    from pmcllama.serve.engine import Engine, Request

    engine = Engine(model, tok, max_batch=batch)
    reqs = [engine.submit(Request(list(prompt), max_tokens=steps + 4)) for _ in range(batch)]
    for _ in range(3):  # the prefill, then two warm steps
        engine.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    while engine.step():
        pass
    return statistics.median(times) * 1000, [r.token_ids[0] for r in reqs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "prepack.json"))
    args = ap.parse_args()

    import torch

    from pmcllama.models import load_model

    torch.set_num_threads(args.threads)
    plain, tok = load_model(args.model)
    packed, _ = load_model(args.model, prepack=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is hypertension?"}],
                                     add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    rows = []
    for batch in args.batches:
        ms = {"plain": [], "prepacked": []}
        same = True
        for _ in range(args.rounds):
            a, ta = step_ms(plain, tok, prompt, batch, args.steps)
            b, tb = step_ms(packed, tok, prompt, batch, args.steps)
            ms["plain"].append(a)
            ms["prepacked"].append(b)
            same = same and ta == tb
        row = {"batch": batch, **{k: round(statistics.median(v), 1) for k, v in ms.items()}, "same_tokens": same}
        row["ratio"] = round(row["plain"] / row["prepacked"], 2)
        rows.append(row)
        print(f"B={batch}: plain {row['plain']} ms/step, prepacked {row['prepacked']} ms/step, "
              f"{row['ratio']}x, same greedy tokens: {same}", flush=True)
    result = {"model": args.model, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
