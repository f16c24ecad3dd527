"""Plots written into run folders: loss curves (like the paper's Fig. 2) and result bars."""
from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(runs: dict[str, str | Path], png: str | Path, title: str = "training loss") -> Path:
    """Overlay the loss curves (loss vs tokens seen) of several runs' metrics.jsonl."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, path in runs.items():
        rows = read_metrics(path)
        if rows:
            ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


def plot_accuracy_bars(table: dict[str, dict[str, dict]], png: str | Path, metric: str = "acc") -> Path:
    """Grouped bars: benchmark x model state, with 95% CI error bars when present.

    `table[model_label][benchmark] = {"acc": .., "acc_ci95": [lo, hi], ...}`.
    """
    plt = _pyplot()
    labels = list(table)
    benches = sorted({b for row in table.values() for b in row})
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 2 + 1.6 * len(benches)), 4))
    for i, label in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for j, b in enumerate(benches):
            r = table[label].get(b)
            if not r:
                continue
            v = 100 * r[metric]
            ci = r.get(f"{metric}_ci95") or [r[metric], r[metric]]
            xs.append(j + i * width)
            ys.append(v)
            lo.append(v - 100 * ci[0])
            hi.append(100 * ci[1] - v)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(benches))], benches)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)
