"""Scoring's pointwise work on `pmcllama.gemv`'s kernels against PyTorch's operations, in one
process: `--kernels pointwise` (the default) RMSNorm and the gated MLP's silu(gate) * up,
`--kernels rope` the rotary embedding of q and k (in place on the fused q/k/v product).

For each item shape of bench_eval_parity (real rows from ../shared/data), SmolLM2-135M scores
the items in fp32 as `pmcllama evaluate` does (`evaluate.load_for`: prepacked, fused layers whose
norms, MLPs and attention run their pointwise work on the kernels), and again with those kernels
turned away (`gemv.pointwise_fits` or `gemv.rope_fits` false: the same modules on PyTorch's
operations), each arm in turn, `--rounds` times, fastest kept: seconds, the ratio, identical
predictions, the largest loglik difference. The CPU's name and extensions are in the result
(bench/results/pointwise.json, rope.json).

    python bench/bench_pointwise.py --items 8 --rounds 12
    python bench/bench_pointwise.py --kernels rope
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import bench_attention
import bench_eval_parity as parity

HERE = Path(__file__).resolve().parent
SWITCHES = {"pointwise": "pointwise_fits", "rope": "rope_fits"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(parity.SHAPES))
    ap.add_argument("--items", type=int, default=8, help="items per shape")
    ap.add_argument("--rounds", type=int, default=12, help="runs of each arm (a noisy machine needs many)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kernels", choices=list(SWITCHES), default="pointwise")
    ap.add_argument("--out", help="default: bench/results/<kernels>.json")
    args = ap.parse_args()
    args.out = args.out or str(HERE / "results" / f"{args.kernels}.json")
    model, tok, items, result = bench_attention.setup(args)
    result["kernels"] = args.kernels
    for shape in args.shapes:
        whole = bench_attention.scoring(model, tok, items[shape], args.rounds, switch=SWITCHES[args.kernels])
        result["shapes"][shape] = whole
        print(bench_attention.scoring_line(shape, whole, digits=3), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{result['cpu']} ({result['cpu_capability']}), {args.threads} threads; wrote {args.out}")


if __name__ == "__main__":
    main()
