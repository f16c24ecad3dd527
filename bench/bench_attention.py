"""Scoring's attention on `pmcllama.gemv`'s kernel against PyTorch's path, in one process.

For each item shape of bench_eval_parity (real rows from ../shared/data), SmolLM2-135M scores
the items in fp32 as `pmcllama evaluate` does (`evaluate.load_for`); two measurements, each arm
in turn, `--rounds` times, fastest kept:

- the attention alone: the query, key and value one layer gets in the first `--batches`
  forwards (captured, with their segment trees), through `gemv.tree_attention` and through
  `training.varlen`'s PyTorch path (a gather into a padded batch, PyTorch's flash kernel): ms,
  GFLOP/s (4 x head dim x heads x causal pairs), and the largest difference;
- whole scoring of the shape's items with the kernel and without it (`tree_attention_fits`
  turned away): seconds, the ratio, identical predictions, the largest loglik difference.

On a CPU with AVX-512 the kernel runs its AVX-512 path (`gemv.wide_fits`); both measurements
are then also made on its AVX2 path (the attention alone: `kernel_avx2_ms`; whole scoring:
`scoring_avx2_avx512`, with "torch" the AVX2 path there). The CPU's name and extensions are in
the result (bench/results/attention.json, or --out).

    python bench/bench_attention.py --items 40 --threads 2
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import bench_eval_parity as parity

HERE = Path(__file__).resolve().parent


class _Layer:  # what varlen's PyTorch path reads of an attention module
    layer_idx, is_causal, training = 0, True, False

    def __init__(self, groups: int):
        self.num_key_value_groups = groups


def capture(model, tok, items, layer: int, batches: int) -> list[dict]:
    """The inputs of layer `layer`'s attention in the first `batches` forwards of scoring `items`."""
    from pmcllama.benchmarks.scoring import evaluate_items
    from pmcllama.training import varlen

    got, real = [], varlen._tree_attention

    def keep(module, query, key, value, tree, dropout, scaling, kwargs):
        if module.layer_idx == layer and len(got) < batches:
            # copies with the strides the model gave them (value: a view of the fused q/k/v product)
            got.append({name: t.new_empty(0).set_(t.untyped_storage().__copy__(), t.storage_offset(), t.shape, t.stride())
                        for name, t in (("query", query), ("key", key), ("value", value))} | {"tree": tree, "scale": scaling})
        return real(module, query, key, value, tree, dropout, scaling, kwargs)

    varlen._tree_attention = keep
    try:
        evaluate_items(model, tok, items, progress=False)
    finally:
        varlen._tree_attention = real
    return got


def fastest(fn, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def attention_rows(captured: list[dict], rounds: int) -> list[dict]:
    import torch

    from pmcllama import gemv
    from pmcllama.training import varlen

    rows = []
    for c in captured:
        q, k, v, tree, scale = c["query"], c["key"], c["value"], c["tree"], c["scale"]
        layer = _Layer(q.shape[1] // k.shape[1])
        fits, gemv.tree_attention_fits = gemv.tree_attention_fits, lambda *a: False
        try:
            want = varlen._tree_attention(layer, q, k, v, tree, 0.0, scale, {})[0][0]
            t_torch = fastest(lambda: varlen._tree_attention(layer, q, k, v, tree, 0.0, scale, {}), rounds)
        finally:
            gemv.tree_attention_fits = fits
        got = gemv.tree_attention(q, k, v, tree, None, scale)
        t_kernel = fastest(lambda: gemv.tree_attention(q, k, v, tree, None, scale), rounds)
        pairs = sum((b - a) * (b - a + 1) // 2 + (b - a) * (ctx[1] - ctx[0] if ctx else 0) for a, b, ctx in tree)
        flops = 4 * q.shape[3] * q.shape[1] * pairs
        row = {"tokens": q.shape[2], "segments": len(tree), "torch_ms": round(t_torch * 1e3, 3),
               "kernel_ms": round(t_kernel * 1e3, 3), "torch_gflops": round(flops / t_torch / 1e9, 1),
               "kernel_gflops": round(flops / t_kernel / 1e9, 1), "ratio": round(t_torch / t_kernel, 2),
               "max_abs_diff": float((got - want).abs().max()), "kernel_path": "avx2"}
        if gemv.wide_fits(q):  # the kernel's AVX2 path beside its AVX-512 one
            def narrow():
                return gemv._tree(gemv._state["tree"], q, k, v, tree, None, scale, torch.get_num_threads(), False)
            t_narrow = fastest(narrow, rounds)
            row.update({"kernel_path": "avx512", "kernel_avx2_ms": round(t_narrow * 1e3, 3),
                        "kernel_avx2_gflops": round(flops / t_narrow / 1e9, 1),
                        "avx512_over_avx2": round(t_narrow / t_kernel, 2),
                        "avx2_max_abs_diff": float((narrow() - want).abs().max())})
        rows.append(row)
    return rows


def scoring(model, tok, items, rounds: int, switch: str = "tree_attention_fits") -> dict:
    """Whole scoring of `items` with the kernel and without it (`gemv.<switch>` turned away)."""
    from pmcllama import gemv
    from pmcllama.benchmarks.scoring import evaluate_items

    fits, runs, recs = getattr(gemv, switch), {"torch": [], "kernel": []}, {}
    evaluate_items(model, tok, items[:2], progress=False)
    try:
        for _ in range(rounds):
            for arm in runs:
                setattr(gemv, switch, fits if arm == "kernel" else (lambda *a: False))
                t0 = time.perf_counter()
                recs[arm] = evaluate_items(model, tok, items, progress=False)
                runs[arm].append(round(time.perf_counter() - t0, 3))
    finally:
        setattr(gemv, switch, fits)
    pairs = list(zip(recs["torch"], recs["kernel"]))
    return {"items": len(items), "torch_seconds_runs": runs["torch"], "kernel_seconds_runs": runs["kernel"],
            "ratio": round(min(runs["torch"]) / min(runs["kernel"]), 3),
            "identical_predictions": sum(a["pred"] == b["pred"] for a, b in pairs),
            "max_abs_loglik_diff": max(abs(x - y) for a, b in pairs for x, y in zip(a["loglik"], b["loglik"]))}


def scoring_line(shape: str, whole: dict, what: str = "scoring", digits: int = 2) -> str:
    """One line for `scoring`'s result: seconds of each arm ("torch" first), the ratio, agreement."""
    return (f"{shape}: {what} {whole['items']} items {min(whole['torch_seconds_runs']):.2f} -> "
            f"{min(whole['kernel_seconds_runs']):.2f} s ({whole['ratio']:.{digits}f}x), {whole['identical_predictions']}/"
            f"{whole['items']} identical predictions, max |dloglik| {whole['max_abs_loglik_diff']:.1e}")


def setup(args):
    """(model, tokenizer, items per shape, the result's header) for `args.threads`,
    `args.shapes` and `args.items`: SmolLM2-135M as `pmcllama evaluate` scores in fp32."""
    import torch

    from pmcllama import gemv
    from pmcllama.evaluate import load_for
    from pmcllama.models import resolve

    torch.set_num_threads(args.threads)
    if not gemv.available():
        raise SystemExit(f"the kernels are not available here: {gemv.reason()}")
    model, tok = load_for(resolve("smollm2-135m"), "loglik", "fp32")
    items = parity.write_data(Path(tempfile.mkdtemp()), args.shapes, args.items)
    return model, tok, items, {"model": "smollm2-135m", "precision": "fp32", "threads": args.threads,
                               "cpu": parity.cpu_description(),
                               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "shapes": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(parity.SHAPES))
    ap.add_argument("--items", type=int, default=40, help="items per shape (whole scoring)")
    ap.add_argument("--batches", type=int, default=3, help="forwards per shape whose attention is timed alone")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "attention.json"))
    args = ap.parse_args()
    model, tok, items, result = setup(args)
    result["layer"] = args.layer
    for shape in args.shapes:
        rows = attention_rows(capture(model, tok, items[shape], args.layer, args.batches), args.rounds)
        whole = scoring(model, tok, items[shape], args.rounds)
        result["shapes"][shape] = {"attention": rows, "scoring": whole}
        if any(r["kernel_path"] == "avx512" for r in rows):  # whole scoring on the AVX2 path ("torch") and the AVX-512 one
            paths = result["shapes"][shape]["scoring_avx2_avx512"] = scoring(model, tok, items[shape], args.rounds,
                                                                              switch="wide_fits")
            print(scoring_line(shape, paths, "scoring on the kernel's AVX2 -> AVX-512 path"), flush=True)
        print(f"{shape}: attention " + ", ".join(f"{r['tokens']} tokens/{r['segments']} segments {r['torch_ms']:.2f} -> "
                                                 f"{r['kernel_ms']:.2f} ms ({r['torch_gflops']:.0f} -> {r['kernel_gflops']:.0f}"
                                                 f" GFLOP/s, {r['ratio']:.2f}x" + (
                                                     f"; AVX2 path {r['kernel_avx2_ms']:.2f} ms, {r['avx512_over_avx2']:.2f}x"
                                                     if "kernel_avx2_ms" in r else "") + ")" for r in rows))
        print(scoring_line(shape, whole), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{result['cpu']} ({result['cpu_capability']}), {args.threads} threads; wrote {args.out}")


if __name__ == "__main__":
    main()
