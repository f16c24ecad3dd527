"""One decoding step of the generation engine with the model's Linear layers as PyTorch leaves
them, prepacked for oneDNN one by one, and prepacked with the siblings that read the same input
fused (`pmcllama.prepack`), in one process, interleaved; the last two through the engine's own
LLaMA forward (`pmcllama.serve.decoder`) too, and the model as `load_model(prepack=True)` gives
it (what serve runs: `pmcllama.gemv`'s kernels and C step for up to 32 rows, where they build).

The copies of the model are loaded side by side; for each batch size B, B identical chat
requests are admitted, a few steps warm up, then `--steps` decoding steps are timed, each arm
in turn, `--rounds` times. Reported: the median milliseconds per step of each, the ratios of
the plain and the unfused copy to the prepacked one, of the prepacked one through transformers'
forward to the decoder, and of the decoder with oneDNN only to the decoder as served, and
whether all gave the same greedy tokens. Also: the Linear layers alone at each batch size
(prepacked, and as served), and the rate at which this machine reads memory (torch.sum over a
buffer as large as the Linear weights), with the time reading those weights once takes: no
decoding step can be faster. Results go to bench/results/prepack.json.

`--compiled` adds one more copy: the plain model under `torch.compile` (inductor, dynamic
shapes, freezing: inductor then packs the weights itself). Its first step at each batch size
compiles, which took 705 s at 8 rows on the 2-core machine of the README, so it is off by default.

    python bench/bench_prepack.py --batches 1 8 32 --threads 2
    python bench/bench_prepack.py --batches 1 --compiled --out bench/results/prepack_compiled.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def step_ms(model, tok, prompt: list[int], batch: int, steps: int,
            decoder: bool = False) -> tuple[float, list[list[int]]]:
    """Median ms of `steps` decoding steps at `batch` rows, and the rows' tokens; through
    transformers' forward, or the engine's own LLaMA forward when `decoder`."""
    from pmcllama.serve.engine import Engine, Request

    engine = Engine(model, tok, max_batch=batch, decoder=decoder)
    assert (engine.decoder is not None) == decoder
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


def linears_ms(model, batch: int, reps: int = 10) -> float:
    """Milliseconds of one pass over the prepacked model's Linear layers alone at `batch` rows
    (what a decoding step spends in them; the rest of the step is everything else)."""
    import torch

    from pmcllama.prepack import FusedLinear, PackedLinear

    layers = [m for m in model.modules() if isinstance(m, (PackedLinear, FusedLinear))]
    xs = {n: torch.randn(batch, n) for n in {m.in_features for m in layers}}  # siblings share their input
    with torch.inference_mode():
        for _ in range(2):
            for m in layers:
                m(xs[m.in_features])
        t0 = time.perf_counter()
        for _ in range(reps):
            for m in layers:
                m(xs[m.in_features])
    return (time.perf_counter() - t0) / reps * 1000


def read_floor_ms(model) -> tuple[float, float]:
    """(GB/s of reading memory, from torch.sum over a buffer the size of the Linear weights;
    the milliseconds reading those weights once takes at that rate: a step's floor)."""
    import torch

    nbytes = sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)
    buf = torch.ones(nbytes // 4)
    buf.sum()
    t0 = time.perf_counter()
    for _ in range(10):
        buf.sum()
    s = (time.perf_counter() - t0) / 10
    return nbytes / s / 1e9, s * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compiled", action="store_true", help="also time the plain model under torch.compile")
    ap.add_argument("--out", default=str(HERE / "results" / "prepack.json"))
    args = ap.parse_args()

    import torch

    from pmcllama.models import load_model
    from pmcllama.prepack import prepack_linears

    torch.set_num_threads(args.threads)
    plain, tok = load_model(args.model)
    unfused, prepacked = load_model(args.model)[0], load_model(args.model)[0]
    prepack_linears(unfused, fuse=False, gemv=False)
    prepack_linears(prepacked, gemv=False)
    served = load_model(args.model, prepack=True)[0]  # what serve runs: with pmcllama.gemv's kernels when they build
    from pmcllama import gemv

    print(f"few-row kernels (pmcllama.gemv): {'available' if gemv.available() else gemv.reason()}", flush=True)
    models = {"plain": plain, "unfused": unfused, "prepacked": prepacked, "decoder_onednn": prepacked,
              "decoder": served}
    if args.compiled:
        import torch._inductor.config as inductor

        inductor.freezing = True
        compiled, _ = load_model(args.model)
        compiled.forward = torch.compile(compiled.forward, dynamic=True)
        models["compiled"] = compiled
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is hypertension?"}],
                                     add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    gbps, floor = read_floor_ms(plain)
    print(f"reading memory: {gbps:.1f} GB/s, so reading the Linear weights once takes {floor:.1f} ms", flush=True)
    rows = []
    for batch in args.batches:
        ms: dict[str, list[float]] = {name: [] for name in models}
        tokens = set()
        for _ in range(args.rounds):
            for name, model in models.items():
                t, ids = step_ms(model, tok, prompt, batch, args.steps, decoder=name.startswith("decoder"))
                ms[name].append(t)
                tokens.add(str(ids))
        row = {"batch": batch, **{k: round(statistics.median(v), 1) for k, v in ms.items()},
               "same_tokens": len(tokens) == 1}
        row["linears_only"] = round(linears_ms(models["prepacked"], batch), 1)
        row["linears_served"] = round(linears_ms(models["decoder"], batch), 1)
        row["ratio"] = round(row["plain"] / row["prepacked"], 2)
        row["fusing"] = round(row["unfused"] / row["prepacked"], 2)
        row["decoder_ratio"] = round(row["prepacked"] / row["decoder_onednn"], 2)
        row["gemv_ratio"] = round(row["decoder_onednn"] / row["decoder"], 2)
        row["plain_over_decoder"] = round(row["plain"] / row["decoder"], 2)
        if "compiled" in row:
            row["compiled_ratio"] = round(row["compiled"] / row["prepacked"], 2)  # above 1: compile is slower
        rows.append(row)
        print(f"B={batch}: plain {row['plain']}, unfused {row['unfused']}, prepacked {row['prepacked']}, "
              f"decoder (oneDNN only) {row['decoder_onednn']}, decoder as served {row['decoder']} ms/step; "
              f"plain/prepacked {row['ratio']}x, unfused/prepacked {row['fusing']}x, prepacked/decoder "
              f"{row['decoder_ratio']}x, oneDNN only/as served {row['gemv_ratio']}x; same greedy tokens: "
              f"{row['same_tokens']}; the Linear layers alone {row['linears_only']} ms prepacked, "
              f"{row['linears_served']} as served" + (f"; compiled {row['compiled']} ms/step" if "compiled" in row else ""),
              flush=True)
    result = {"model": args.model, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "gemv_kernel": gemv.available(),
              "torch": torch.__version__, "read_gb_per_s": round(gbps, 1), "weights_read_floor_ms": round(floor, 1),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
