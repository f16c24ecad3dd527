"""Plots written into run folders: loss curves (like the paper's Fig. 2) and result bars."""
from __future__ import annotations

from pathlib import Path

from pmcllama.inputs import iter_jsonl


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; the half-written last line of a killed run is left out."""
    return [row for _, row in iter_jsonl(path, "metrics file", torn_tail_ok=True) if isinstance(row, dict)]


def loss_series(path: str | Path, x: str = "tokens") -> dict[str, list[float]]:
    """A run's training and validation loss curves from its metrics.jsonl: x, loss, val_x, val_loss."""
    rows = [r for r in read_metrics(path) if isinstance(r.get("loss"), (int, float)) and isinstance(r.get(x), (int, float))]
    val = [r for r in rows if r.get("val_loss") is not None]
    return {"x": [r[x] for r in rows], "loss": [r["loss"] for r in rows],
            "val_x": [r[x] for r in val], "val_loss": [r["val_loss"] for r in val]}


def smooth_ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average (alpha = weight of the past, 0 = the values themselves),
    bias-corrected so the first points are not pulled towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha ** i) if alpha else v)
    return out


def plot_losses(runs: dict[str, str | Path], png: str | Path, title: str = "training loss",
                x: str = "tokens", ema: float = 0.0, twins: dict[str, str] | None = None) -> Path:
    """Overlay the loss curves (loss vs tokens seen, or vs step) of several runs' metrics.jsonl;
    validation losses, where logged, are dashed lines with markers in the same colour. `ema`
    smooths the training curves; `twins` {run: its control} draws each control in its twin's
    colour, dotted (the paper's Fig. 2: PMC-LLaMA against LLaMA under the same fine-tuning)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    controls = {c: r for r, c in (twins or {}).items()}
    colours: dict[str, str] = {}
    for label in sorted(runs, key=lambda k: k in controls):  # a run before its control
        series = loss_series(runs[label], x)
        if not series["x"]:
            continue
        style = {"color": colours[controls[label]], "linestyle": ":"} if colours.get(controls.get(label)) else {}
        smooth = smooth_ema(series["loss"], ema)
        (line,) = ax.plot(series["x"], smooth, label=f"{label} train" + (f" (EMA {ema:g})" if ema else ""), **style)
        colours[label] = line.get_color()
        if series["val_x"]:
            ax.plot(series["val_x"], series["val_loss"], "o--", color=line.get_color(), label=f"{label} val")
    ax.set_xlabel("tokens seen" if x == "tokens" else "optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


def plot_accuracy_bars(table: dict[str, dict[str, dict]], png: str | Path, metric: str = "acc") -> Path:
    """Grouped bars: benchmark x model state, with 95% CI error bars when present, and each
    benchmark's majority-class and best-constant-choice baselines as lines across its group.

    `table[model_label][benchmark] = {"acc": .., "acc_ci95": [lo, hi], "baselines": {...}, ...}`.
    """
    plt = _pyplot()
    labels = list(table)
    benches = sorted({b for row in table.values() for b in row})
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 2 + 1.6 * len(benches) + 0.3 * len(labels)), 4))
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
    _baselines(ax, table, benches, width)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(benches))], benches)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


def _baselines(ax, table: dict[str, dict[str, dict]], benches: list[str], width: float) -> None:
    """Majority class (dashed) and best constant choice (dotted) across each benchmark's bars
    (benchmark j's bars are centred at j, j + width, ... one per model)."""
    styles = {"majority class": ("--", "black"), "best constant choice": (":", "dimgray")}
    shown = set()
    for j, b in enumerate(benches):
        base = next((row[b].get("baselines") for row in table.values() if b in row), None) or {}
        values = {"majority class": base.get("majority"),
                  "best constant choice": (base.get("constant_choice") or {}).get("max")}
        for name, v in values.items():
            if isinstance(v, (int, float)):
                ls, colour = styles[name]
                ax.hlines(100 * v, j - width / 2 - 0.05, j + width * (len(table) - 0.5) + 0.05,
                          linestyles=ls, colors=colour, label=None if name in shown else name)
                shown.add(name)


def plot_judgments(summaries: dict[str, dict], png: str | Path) -> Path:
    """Stacked horizontal bars of a judge run, {comparison title: summary}: the first-named side's
    wins, ties and losses (share of the judged pairs), its win rate and 95% CI beside each bar."""
    plt = _pyplot()
    kinds = list(summaries)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.7 * len(kinds)))
    for i, kind in enumerate(kinds):
        s = summaries[kind]
        n = max(1, s["n"])
        left = 0.0
        for part, color in (("wins", "tab:green"), ("ties", "tab:gray"), ("losses", "tab:red")):
            ax.barh(i, 100 * s[part] / n, left=left, color=color, label=part if i == 0 else None)
            left += 100 * s[part] / n
        ci = s["win_rate_ci95"]
        note = "no judged pairs" if s["win_rate"] is None else f"win rate {100 * s['win_rate']:.1f}%" + (
            f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else "") + f", n={s['n']}"
        ax.text(101, i, note, va="center", fontsize=8)
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlim(0, 150)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_xlabel("% of judged pairs")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)
