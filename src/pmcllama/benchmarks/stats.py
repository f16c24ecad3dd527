"""Accuracy with a bootstrap confidence interval, and the baselines to read it against.

A small model on a medical multiple-choice test often answers the same thing every time
("A", or "no"): its accuracy then equals the share of that gold answer. So every accuracy
is reported beside
- `majority`: the share of the most frequent gold choice (always answering it),
- `constant_choice`: the accuracy of always picking choice index k, for every k, and the best,
- `random`: the expected accuracy of a uniform guess (mean of 1 / number of choices),
plus `pred_share`, how often the model picked each choice, which shows such a collapse.

Also here: calibration (`calibration`: expected calibration error over 10 equal-width
confidence bins, confidence = the softmax over a question's per-choice logliks at the
predicted choice), accuracy per subject, and the paired comparison of two runs on the same
items (`pair_records` matches them by id; `mcnemar_exact`, `paired_bootstrap_ci`), the
difference of two such paired differences on two benchmarks (`difference_of_differences`),
and for pairwise judging the sign test and AlpacaEval 2's length-controlled win rate.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from pmcllama.errors import UserError


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
    """Accuracy, acc_norm, their CIs, baselines and prediction shares for scored records.

    Records of generated answers have no acc_norm (None) and may have `pred` None (no
    choice could be read from the text): counted as wrong and in `unparsable`."""
    correct = [float(r["correct"]) for r in records]
    has_norm = bool(records) and all("correct_norm" in r for r in records)
    correct_norm = [float(r["correct_norm"]) for r in records] if has_norm else []
    n = len(records)
    width = max(n_choices) if n_choices else 0
    generated = any("parsed" in r for r in records)
    return {
        "n": n,
        "acc": sum(correct) / n if n else None,
        "acc_ci95": bootstrap_ci(correct, n_boot, seed),
        "acc_norm": sum(correct_norm) / n if has_norm else None,
        "acc_norm_ci95": bootstrap_ci(correct_norm, n_boot, seed) if has_norm else None,
        "baselines": baselines([r["gold"] for r in records], n_choices, labels),
        "pred_share": pred_share([r["pred"] for r in records], width, labels),
        "truncated": sum(bool(r.get("truncated")) for r in records),
        "unparsable": sum(r["pred"] is None for r in records) if generated else None,
    }


def choice_probs(logliks: Sequence[float]) -> list[float]:
    """Softmax over one question's per-choice log-likelihoods."""
    top = max(logliks)
    exps = [math.exp(x - top) for x in logliks]
    total = math.fsum(exps)
    return [e / total for e in exps]


def calibration(confidences: Sequence[float], correct: Sequence[float], n_bins: int = 10) -> dict:
    """Expected calibration error and the reliability bins.

    Bins are (k/n, (k+1)/n] (the first includes 0); ECE = sum over bins of
    (share of items) * |accuracy - mean confidence|.
    """
    n = len(confidences)
    bins = [{"lo": k / n_bins, "hi": (k + 1) / n_bins, "n": 0, "confidence": None, "accuracy": None}
            for k in range(n_bins)]
    sums = [[0.0, 0.0] for _ in range(n_bins)]
    for conf, ok in zip(confidences, correct):
        k = min(n_bins - 1, max(0, math.ceil(conf * n_bins) - 1))
        bins[k]["n"] += 1
        sums[k][0] += conf
        sums[k][1] += float(ok)
    ece = 0.0
    for b, (c, a) in zip(bins, sums):
        if b["n"]:
            b["confidence"], b["accuracy"] = c / b["n"], a / b["n"]
            ece += b["n"] / n * abs(b["accuracy"] - b["confidence"])
    return {"ece": ece if n else None, "mean_confidence": math.fsum(confidences) / n if n else None,
            "n_bins": n_bins, "bins": bins}


def record_calibration(records: Sequence[dict], n_bins: int = 10) -> dict:
    """`calibration` of scored records: confidence of the `acc` prediction from its logliks
    (or, for voted generated answers, the record's `confidence`: the answer's share of votes)."""
    conf = [choice_probs(r["loglik"])[r["pred"]] if "loglik" in r else float(r["confidence"])
            for r in records]
    return calibration(conf, [float(r["correct"]) for r in records], n_bins)


def by_subject(records: Sequence[dict], subjects: Sequence[str | None]) -> dict | None:
    """{subject: {n, acc, acc_norm}} (None when no item has a subject)."""
    if not any(subjects):
        return None
    groups: dict[str, list[dict]] = {}
    for r, s in zip(records, subjects):
        groups.setdefault(s or "(no subject)", []).append(r)
    return {s: {"n": len(rs), "acc": sum(r["correct"] for r in rs) / len(rs),
                "acc_norm": sum(r["correct_norm"] for r in rs) / len(rs)
                if all("correct_norm" in r for r in rs) else None}
            for s, rs in sorted(groups.items())}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) test on the discordant pairs.

    `b`: items only the first run got right, `c`: only the second. p = min(1, 2 P(X <= min(b, c))).
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap CI of mean(b) - mean(a), resampling items (pairs kept together)."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    return bootstrap_ci([y - x for x, y in zip(a, b)], n_boot, seed, level)


def pair_records(first: Sequence[dict], second: Sequence[dict], key: str = "correct",
                 where: str = "") -> tuple[list[float], list[float]]:
    """Correctness of two runs' records matched by item id (error when the id sets differ)."""
    for rows in (first, second):
        if any(not isinstance(r.get(key), (bool, int, float)) for r in rows):
            raise UserError(f"{where}the records have no '{key}' (runs of mode generate or cot "
                            "have acc only; compare them with --metric acc)")
    a = {str(r["id"]): float(r[key]) for r in first}
    b = {str(r["id"]): float(r[key]) for r in second}
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise UserError(f"{where}the two runs scored different items ({len(only_a)} only in the first, "
                        f"{len(only_b)} only in the second; e.g. "
                        f"{(only_a or only_b)[0]!r}): a paired comparison needs the same items")
    ids = list(a)
    return [a[i] for i in ids], [b[i] for i in ids]


def paired_comparison(first: Sequence[dict], second: Sequence[dict], key: str = "correct",
                      n_boot: int = 1000, seed: int = 0, where: str = "") -> dict:
    """Second run minus first on the same items: difference, its 95% CI, McNemar exact p."""
    a, b = pair_records(first, second, key, where)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = len(a)
    return {
        "n": n,
        "diff": (sum(b) - sum(a)) / n if n else None,
        "diff_ci95": paired_bootstrap_ci(a, b, n_boot, seed),
        "only_first_correct": only_a,
        "only_second_correct": only_b,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of wins against losses (ties left out): binomial(wins + losses, 1/2)."""
    return mcnemar_exact(wins, losses)


def length_controlled_win_rate(scores: Sequence[float], len_a: Sequence[float], len_b: Sequence[float],
                               ridge: float = 1e-3, iters: int = 100) -> float | None:
    """AlpacaEval 2's length control: a logistic regression of B's preference (1 win, 0.5 tie,
    0 loss) on an intercept and tanh((len_b - len_a) / std), fitted by Newton's method with a
    small ridge; the win rate it predicts at zero length difference, sigmoid(intercept)."""
    import numpy as np

    y = np.asarray(scores, dtype=np.float64)
    if y.size == 0:
        return None
    d = np.asarray(len_b, dtype=np.float64) - np.asarray(len_a, dtype=np.float64)
    sd = d.std()
    X = np.stack([np.ones_like(d), np.tanh(d / sd) if sd > 0 else np.zeros_like(d)], axis=1)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1.0 / (1.0 + np.exp(-w[0])))


def difference_of_differences(a1: Sequence[float], b1: Sequence[float], a2: Sequence[float],
                              b2: Sequence[float], n_boot: int = 1000, seed: int = 0,
                              level: float = 0.95) -> dict:
    """How much more run b gains over run a on benchmark 1 than on benchmark 2:
    (mean(b1) - mean(a1)) - (mean(b2) - mean(a2)), each pair of lists paired by item, with a
    percentile bootstrap CI that resamples the items of each benchmark independently (pairs
    kept together). E.g. a knowledge probe against its control probe: the gain on facts that
    were injected beyond the gain on questions of the same kind about facts that were not."""
    import numpy as np

    if len(a1) != len(b1) or len(a2) != len(b2):
        raise ValueError("paired samples must have the same length")
    if not a1 or not a2:
        raise ValueError("both benchmarks need items")
    d1 = np.asarray(b1, dtype=np.float64) - np.asarray(a1, dtype=np.float64)
    d2 = np.asarray(b2, dtype=np.float64) - np.asarray(a2, dtype=np.float64)
    out = {"n": [int(d1.size), int(d2.size)], "diff": float(d1.mean() - d2.mean()),
           "first_diff": float(d1.mean()), "second_diff": float(d2.mean()), "diff_ci95": None}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        m1 = d1[rng.integers(0, d1.size, size=(n_boot, d1.size))].mean(axis=1)
        m2 = d2[rng.integers(0, d2.size, size=(n_boot, d2.size))].mean(axis=1)
        alpha = (1.0 - level) / 2.0
        out["diff_ci95"] = [float(q) for q in np.quantile(m1 - m2, [alpha, 1.0 - alpha])]
    return out
