"""REPORT  evaluate outputs of several models -> one table like the paper's Table 1.

`pmcllama report RUN_OR_EVAL_DIR... [--out DIR] [--metric acc|acc_norm]` reads evaluate
output folders (`results.json` + `predictions/`) and recipe run folders (every
`eval/<state>/` inside, in the recipe's order), and writes into `--out`:

    report.md    models x benchmarks, each cell "accuracy (95% CI)" in %, then for each
                 benchmark the paired comparison of every model against the first one
                 (for a recipe run: the pairs it recorded, every later state against the
                 base model and every ablation arm against its twin): difference (model -
                 other) with its 95% paired-bootstrap CI and the exact McNemar p-value, on
                 the items both scored (matched by id); with the
                 knowledge probe and its control (kg-probe, kg-control), every model's
                 probe gain minus its control gain with a 95% bootstrap CI
    report.json  the same numbers
    report.png   grouped bars with 95% CIs

The markdown is also printed. A folder that is neither is a one-line error (exit 2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.inputs import iter_jsonl, read_json
from pmcllama.stage import write_json


@dataclass
class Run:
    """One evaluated model: a label, its evaluate folder and its results.json."""

    label: str
    folder: Path
    results: dict

    @property
    def benchmarks(self) -> dict[str, dict]:
        return {k: one_accuracy(v) for k, v in self.results.items() if k != "model" and isinstance(v, dict)}


GENERATED = ("generate", "cot")


def one_accuracy(entry: dict) -> dict:
    """A benchmark's results; answers read from generated text (mode generate or cot) have one
    accuracy, which stands for acc_norm as well, so such runs sit in the same table and pairs."""
    if entry.get("mode") in GENERATED and entry.get("acc_norm") is None and "acc" in entry:
        return {**entry, "acc_norm": entry["acc"], "acc_norm_ci95": entry.get("acc_ci95")}
    return entry


def _read_results(folder: Path) -> dict | None:
    path = folder / "results.json"
    if not path.is_file() or not (folder / "predictions").is_dir():
        return None
    data = read_json(path, "results.json")
    return data if isinstance(data, dict) and "model" in data else None


def _recipe_states(folder: Path) -> list[Path]:
    """eval/<state>/ folders of a recipe run, in the recipe's order when it recorded one."""
    evals = folder / "eval"
    if not evals.is_dir():
        return []
    found = {p.name: p for p in evals.iterdir() if p.is_dir() and _read_results(p) is not None}
    states = _run_record(folder).get("states")
    order = [s for s in states if s in found] if isinstance(states, dict) else []
    return [found[s] for s in order + sorted(set(found) - set(order))]


def _run_record(folder: Path) -> dict:
    """A recipe run's results.json ({states, pairs, ...}); {} when there is none or it is unreadable."""
    try:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def discover(paths: list[str | Path]) -> list[Run]:
    """Evaluate folders named, or found inside recipe run folders, with unique labels."""
    runs: list[tuple[str, Path, dict]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError("not found" if not p.exists() else "not a folder", p)
        results = _read_results(p)
        if results is not None:
            runs.append((p.resolve().name, p, results))
            continue
        states = _recipe_states(p)
        if not states:
            raise UserError("neither an evaluate output (results.json + predictions/) nor a recipe "
                            "run folder with eval/<state>/ inside", p)
        runs += [(f"{p.resolve().name}/{s.name}", s, _read_results(s) or {}) for s in states]
    labels = [r[0] for r in runs]
    for i, (label, folder, _) in enumerate(runs):
        if labels.count(label) > 1:  # same folder names: use the path as given
            labels[i] = str(folder)
    return [Run(label, folder, results) for label, (_, folder, results) in zip(labels, runs)]


def check_results(run: Run, metric: str) -> None:
    """Every benchmark entry has the numbers the table and chart need."""
    path = run.folder / "results.json"
    for bench, v in run.benchmarks.items():
        value, ci = v.get(metric), v.get(f"{metric}_ci95")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"benchmark '{bench}' has no numeric '{metric}'", path)
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2
                                   and all(isinstance(c, (int, float)) for c in ci)):
            raise UserError(f"benchmark '{bench}': '{metric}_ci95' must be [low, high]", path)


def read_predictions(run: Run, bench: str) -> list[dict]:
    path = run.folder / "predictions" / f"{bench}.jsonl"
    if not path.is_file():
        raise UserError(f"predictions of benchmark '{bench}' are missing", path)
    rows = []
    for lineno, row in iter_jsonl(path, "predictions file"):
        if not isinstance(row, dict) or not isinstance(row.get("id"), (str, int)):
            raise UserError("a prediction must be a JSON object with an 'id'", path, lineno)
        if run.benchmarks.get(bench, {}).get("mode") in GENERATED:
            row.setdefault("correct_norm", row.get("correct"))
        rows.append(row)
    return rows


def recipe_pairs(runs: list[Run]) -> list[tuple[Run, Run]] | None:
    """The pairs a recipe run recorded in its results.json ([[model, against], ...] by state:
    later states against the base model, ablation arms against their twins); None if none did."""
    by_state = {(r.folder.parent.parent.resolve(), r.folder.name): r for r in runs}
    pairs, recorded = [], False
    for folder in dict.fromkeys(k[0] for k in by_state):
        listed = _run_record(folder).get("pairs")
        if isinstance(listed, list):
            recorded = True
            pairs += [(by_state[(folder, m)], by_state[(folder, a)]) for m, a in
                      (p for p in listed if isinstance(p, list) and len(p) == 2)
                      if (folder, m) in by_state and (folder, a) in by_state]
    return pairs if recorded else None


def comparisons(runs: list[Run], metric: str, n_boot: int, seed: int,
                pairs: list[tuple[Run, Run]] | None = None) -> dict[str, list[dict]]:
    """{benchmark: [paired comparison of each (model, against) pair]}; by default every run
    against runs[0]."""
    from pmcllama.benchmarks.stats import paired_comparison

    key = "correct" if metric == "acc" else "correct_norm"
    pairs = [(run, runs[0]) for run in runs[1:]] if pairs is None else pairs
    out = {}
    for bench in dict.fromkeys(b for r in runs for b in r.benchmarks):
        rows = []
        for run, against in pairs:
            if bench not in run.benchmarks or bench not in against.benchmarks:
                continue
            where = f"benchmark '{bench}', {run.folder} vs {against.folder}: "
            cmp = paired_comparison(read_predictions(against, bench), read_predictions(run, bench), key,
                                    n_boot, seed, where)
            rows.append({"model": run.label, "against": against.label, **cmp})
        if rows:
            out[bench] = rows
    return out


PROBE, CONTROL = "kg-probe", "kg-control"


def probe_over_control(runs: list[Run], metric: str, n_boot: int, seed: int) -> list[dict]:
    """For every run i >= 1 scored on both the knowledge probe and its control: its gain over
    runs[0] on the probe minus its gain on the control, with the 95% bootstrap CI."""
    from pmcllama.benchmarks.stats import difference_of_differences, pair_records

    key = "correct" if metric == "acc" else "correct_norm"
    first, out = runs[0], []
    if not {PROBE, CONTROL} <= set(first.benchmarks):
        return out
    base = {b: read_predictions(first, b) for b in (PROBE, CONTROL)}
    for run in runs[1:]:
        if not {PROBE, CONTROL} <= set(run.benchmarks):
            continue
        pairs = [pair_records(base[b], read_predictions(run, b), key, f"benchmark '{b}', {run.folder}: ")
                 for b in (PROBE, CONTROL)]
        d = difference_of_differences(*pairs[0], *pairs[1], n_boot=n_boot, seed=seed)
        out.append({"model": run.label, "against": first.label, **d})
    return out


def _pct(x: float | None, sign: bool = False) -> str:
    return "-" if x is None else (f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}")


def _cell(r: dict | None, metric: str) -> str:
    if not r or r.get(metric) is None:
        return "-"
    ci = r.get(f"{metric}_ci95")
    return f"{_pct(r[metric])} ({_pct(ci[0])}-{_pct(ci[1])})" if ci else _pct(r[metric])


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def markdown(runs: list[Run], benches: list[str], cmps: dict[str, list[dict]], metric: str,
             over: list[dict] = ()) -> str:
    lines = [f"{metric} in % (95% bootstrap CI)", "",
             "| model | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for run in runs:
        lines.append(f"| {run.label} | " + " | ".join(_cell(run.benchmarks.get(b), metric) for b in benches) + " |")
    ns = [f"{b}: n={next(r.benchmarks[b]['n'] for r in runs if b in r.benchmarks)}" for b in benches]
    lines += ["", "Items: " + "; ".join(ns)]
    unparsed = [f"{r.label} {b}: {v['unparsable']} of {v['n']}" for r in runs for b, v in r.benchmarks.items()
                if v.get("unparsable") is not None]
    if unparsed:
        lines.append("Unparsable generated answers (counted wrong): " + "; ".join(unparsed))
    generated = sorted({r.label for r in runs for v in r.benchmarks.values() if v.get("mode") in GENERATED})
    if generated and metric == "acc_norm":
        lines.append("Answers read from generated text have one accuracy, shown as acc_norm: "
                     + ", ".join(generated))
    for b in benches:
        templates = {r.benchmarks[b].get("prompt_template") for r in runs if b in r.benchmarks}
        if len(templates) > 1:
            lines.append(f"Note: {b} was scored with different prompt templates "
                         f"({', '.join(sorted(map(str, templates)))}): its numbers are not comparable.")
    if cmps:
        against = {c["against"] for rows in cmps.values() for c in rows}
        head = f"against {next(iter(against))}" if len(against) == 1 else "of each model against the one named"
        lines += ["", f"Paired comparison {head} (same items, matched by id; "
                  "difference in points, 95% paired-bootstrap CI, exact McNemar p):", "",
                  "| benchmark | model | n | difference | 95% CI | only other right | only model right | McNemar p |",
                  "|---|---|---|---|---|---|---|---|"]
        for bench, rows in cmps.items():
            for c in rows:
                model = c["model"] if len(against) == 1 else f"{c['model']} vs {c['against']}"
                ci = c["diff_ci95"]
                ci_text = f"{_pct(ci[0], True)} to {_pct(ci[1], True)}" if ci else "-"
                lines.append(f"| {bench} | {model} | {c['n']} | {_pct(c['diff'], True)} | {ci_text} | "
                             f"{c['only_first_correct']} | {c['only_second_correct']} | {_p(c['mcnemar_p'])} |")
    return "\n".join(lines + _control_lines(over, runs)) + "\n"


def _control_lines(over: list[dict], runs: list[Run]) -> list[str]:
    if not over:
        return []
    lines = ["", f"Knowledge probe over its control (terms in neither the corpus nor the instructions): gain "
             f"against {runs[0].label} on {PROBE} minus gain on {CONTROL}, in points, 95% bootstrap CI "
             "(items resampled independently per benchmark):", "",
             f"| model | {PROBE} gain | {CONTROL} gain | difference | 95% CI |", "|---|---|---|---|---|"]
    for d in over:
        ci = d["diff_ci95"]
        ci_text = f"{_pct(ci[0], True)} to {_pct(ci[1], True)}" if ci else "-"
        lines.append(f"| {d['model']} | {_pct(d['first_diff'], True)} | {_pct(d['second_diff'], True)} | "
                     f"{_pct(d['diff'], True)} | {ci_text} |")
    return lines


def make_report(paths: list[str | Path], out: str | Path, metric: str = "acc",
                n_boot: int = 1000, seed: int = 0) -> str:
    """Write report.md, report.json and report.png into `out`; return the markdown."""
    from pmcllama.plots import plot_accuracy_bars

    if metric not in ("acc", "acc_norm"):
        raise UserError(f"metric must be acc or acc_norm, not {metric!r}")
    runs = discover(paths)
    for r in runs:
        check_results(r, metric)
    benches = list(dict.fromkeys(b for r in runs for b in r.benchmarks))
    cmps = comparisons(runs, metric, n_boot, seed, recipe_pairs(runs))
    over = probe_over_control(runs, metric, n_boot, seed)
    text = markdown(runs, benches, cmps, metric, over)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text, encoding="utf-8")
    write_json(out / "report.json", {
        "metric": metric, "bootstrap": n_boot, "seed": seed, "benchmarks": benches,
        "models": [{"label": r.label, "folder": str(r.folder), "model": r.results.get("model"),
                    "results": {b: {**{k: v.get(k) for k in ("n", metric, f"{metric}_ci95", "prompt_template")},
                                    "ece": (v.get("calibration") or {}).get("ece")}
                                for b, v in r.benchmarks.items()}} for r in runs],
        "comparisons": cmps, **({"probe_over_control": over} if over else {}),
    })
    plot_accuracy_bars({r.label: r.benchmarks for r in runs}, out / "report.png", metric=metric)
    return text


def plot_reliability(calib: dict, png: str | Path, title: str = "reliability") -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, bar width = bin, with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    width = 1.0 / calib["n_bins"]
    for b in calib["bins"]:
        if b["n"]:
            ax.bar(b["lo"], b["accuracy"], width, align="edge", color="tab:blue", edgecolor="black", alpha=0.8)
            ax.text(b["lo"] + width / 2, min(b["accuracy"], 0.93) + 0.02, str(b["n"]), ha="center", fontsize=7)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (softmax of choice logliks)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)
