"""Accuracy with a bootstrap confidence interval, and the baselines to read it against.

A small model on a medical multiple-choice test often answers the same thing every time
("A", or "no"): its accuracy then equals the share of that gold answer. So every accuracy
is reported beside
- `majority`: the share of the most frequent gold choice (always answering it),
- `constant_choice`: the accuracy of always picking choice index k, for every k, and the best,
- `random`: the expected accuracy of a uniform guess (mean of 1 / number of choices),
plus `pred_share`, how often the model picked each choice, which shows such a collapse.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap CI of the mean of `values` (None when n_boot or n is 0)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if n_boot <= 0 or x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // x.size)  # bound the index matrix to ~16 MB
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        idx = rng.integers(0, x.size, size=(k, x.size))
        means[start:start + k] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def baselines(golds: Sequence[int], n_choices: Sequence[int], labels: Sequence[str] | None = None) -> dict:
    """Majority, constant-choice and random-guess accuracies for gold indices `golds`."""
    n = len(golds)
    if n == 0:
        return {"majority": None, "majority_choice": None,
                "constant_choice": {"max": None, "per_choice": []}, "random": None}
    width = max(n_choices)
    counts = Counter(golds)
    per_choice = [counts.get(k, 0) / n for k in range(width)]
    best = max(range(width), key=lambda k: (per_choice[k], -k))
    label = labels[best] if labels and best < len(labels) else best
    return {
        "majority": max(counts.values()) / n,
        "majority_choice": label,
        "constant_choice": {"max": per_choice[best], "per_choice": per_choice},
        "random": math.fsum(1.0 / c for c in n_choices) / n,
    }


def pred_share(preds: Sequence[int], width: int, labels: Sequence[str] | None = None) -> dict:
    """Share of the predictions that picked each choice index (keyed by label)."""
    n = max(1, len(preds))
    counts = Counter(preds)
    names = list(labels) if labels and len(labels) >= width else [str(k) for k in range(width)]
    return {names[k]: counts.get(k, 0) / n for k in range(width)}


def summarize(records: Sequence[dict], n_choices: Sequence[int], labels: Sequence[str] | None = None,
              n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy, acc_norm, their CIs, baselines and prediction shares for scored records."""
    correct = [float(r["correct"]) for r in records]
    correct_norm = [float(r["correct_norm"]) for r in records]
    n = len(records)
    width = max(n_choices) if n_choices else 0
    return {
        "n": n,
        "acc": sum(correct) / n if n else None,
        "acc_ci95": bootstrap_ci(correct, n_boot, seed),
        "acc_norm": sum(correct_norm) / n if n else None,
        "acc_norm_ci95": bootstrap_ci(correct_norm, n_boot, seed),
        "baselines": baselines([r["gold"] for r in records], n_choices, labels),
        "pred_share": pred_share([r["pred"] for r in records], width, labels),
        "truncated": sum(bool(r.get("truncated")) for r in records),
    }
