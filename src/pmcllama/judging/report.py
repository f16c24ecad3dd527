"""Judged pairs -> outcomes, statistics and the files of a judge run.

A comparison "Y vs X" is judged twice: X shown first (order `xy`) and Y shown first (`yx`).
Y's score is 1 when both orders prefer Y, 0 when both prefer X, 0.5 for a tie or when the two
orders disagree (position inconsistent). A pair whose replies held no verdict (after one retry)
has no score: it is counted and listed, never read as a verdict.
"""
from __future__ import annotations

import json
from pathlib import Path

from pmcllama.benchmarks.stats import bootstrap_ci, length_controlled_win_rate, sign_test
from pmcllama.progress import progress

_SCORE = {"xy": {"A": 0.0, "B": 1.0, "C": 0.5}, "yx": {"A": 1.0, "B": 0.0, "C": 0.5}}


def comparisons(pair: dict, vs_reference: bool) -> list[tuple[str, str, str, str | None]]:
    """(kind, X text, Y text, reference shown) for one pair: B vs A, and each side vs the reference."""
    ref = pair.get("reference")
    out = [("b_vs_a", pair["a"], pair["b"], ref)]
    if ref and vs_reference:
        out += [("a_vs_reference", ref, pair["a"], None), ("b_vs_reference", ref, pair["b"], None)]
    return out


def judge_pairs(endpoint, template, pairs: list[dict], concurrency: int, vs_reference: bool) -> list[dict]:
    """Every comparison of every pair judged in both orders; one judgment record per comparison."""
    from pmcllama.judging.client import run_games

    plan = [(p, kind, x, y, ref) for p in pairs for kind, x, y, ref in comparisons(p, vs_reference)]
    games = [g for p, _, x, y, ref in plan for g in (template.messages(p["prompt"], x, y, ref),
                                                      template.messages(p["prompt"], y, x, ref))]
    bar = progress(total=len(games), desc="judge", unit="game")
    try:
        results = run_games(endpoint, template, games, concurrency, bar)
    finally:
        bar.close()
    return [outcome(p, kind, x, y, results[2 * i], results[2 * i + 1])
            for i, (p, kind, x, y, _) in enumerate(plan)]


def outcome(pair: dict, kind: str, x: str, y: str, xy: dict, yx: dict) -> dict:
    s1 = _SCORE["xy"].get(xy["verdict"])
    s2 = _SCORE["yx"].get(yx["verdict"])
    failure = xy["failure"] or yx["failure"]
    judged = s1 is not None and s2 is not None
    return {"prompt": pair["prompt"], "comparison": kind, "reference": pair.get("reference"),
            "x": x, "y": y, "verdict_xy": xy["verdict"], "verdict_yx": yx["verdict"],
            "replies_xy": xy["replies"], "replies_yx": yx["replies"],
            "score": (s1 if s1 == s2 else 0.5) if judged else None,
            "consistent": (s1 == s2) if judged else None, "failure": None if judged else failure}


def summarize(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Y against X over the judged rows: counts, win rate + CI, sign test, inconsistency, lengths, LC."""
    judged = [r for r in rows if r["score"] is not None]
    scores = [r["score"] for r in judged]
    wins, losses = scores.count(1.0), scores.count(0.0)
    n = len(judged)
    len_x, len_y = [len(r["x"]) for r in judged], [len(r["y"]) for r in judged]
    return {
        "n": n, "unjudged": len(rows) - n, "wins": wins, "ties": n - wins - losses, "losses": losses,
        "win_rate": sum(scores) / n if n else None,
        "win_rate_ci95": bootstrap_ci(scores, n_boot, seed),
        "sign_test_p": sign_test(wins, losses),
        "position_inconsistency": sum(not r["consistent"] for r in judged) / n if n else None,
        "mean_len_x": sum(len_x) / n if n else None, "mean_len_y": sum(len_y) / n if n else None,
        "lc_win_rate": length_controlled_win_rate(scores, len_x, len_y),
    }


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def titles(names: list[str]) -> dict[str, str]:
    return {"b_vs_a": f"{names[1]} vs {names[0]}", "a_vs_reference": f"{names[0]} vs reference",
            "b_vs_reference": f"{names[1]} vs reference"}


def table(summaries: dict[str, dict], names: list[str]) -> str:
    """Markdown: one row per comparison."""
    lines = ["| comparison | n | wins | ties | losses | win rate % (95% CI) | LC win rate % | sign test p "
             "| position inconsistency % | mean length (chars) | unjudged |", "|---" * 11 + "|"]
    for kind, s in summaries.items():
        ci = s["win_rate_ci95"]
        rate = _pct(s["win_rate"]) + (f" ({_pct(ci[0])}-{_pct(ci[1])})" if ci else "")
        lens = "-" if not s["n"] else f"{s['mean_len_y']:.0f} vs {s['mean_len_x']:.0f}"
        lines.append(f"| {titles(names)[kind]} | {s['n']} | {s['wins']} | {s['ties']} | {s['losses']} | {rate} | "
                     f"{_pct(s['lc_win_rate'])} | {s['sign_test_p']:.3g} | {_pct(s['position_inconsistency'])} "
                     f"| {lens} | {s['unjudged']} |")
    return "\n".join(lines) + "\n"


def markdown(summaries: dict, judgments: list[dict], skipped: list[dict], names: list[str], head: str) -> str:
    from pmcllama.judge import STRONG_JUDGE

    text = [f"# Judged comparison: {names[1]} vs {names[0]}\n", head + "\n", table(summaries, names),
            "Win rate = (wins + ties/2) / n of the first-named side; each pair is judged in both orders and a "
            "verdict that changes with the order is a tie. LC = AlpacaEval 2's length-controlled win rate "
            "(the win rate a logistic fit on the length difference predicts at equal lengths).\n",
            STRONG_JUDGE + "\n"]
    failed = [r for r in judgments if r["score"] is None]
    if skipped or failed:
        text.append(f"## Skipped or unjudged ({len(skipped) + len(failed)})\n")
        text += [f"- {json.dumps(s['prompt'][:120], ensure_ascii=False)}: {s['why']}" for s in skipped]
        text += [f"- {json.dumps(r['prompt'][:120], ensure_ascii=False)} ({r['comparison']}): {r['failure']}"
                 for r in failed]
        text.append("")
    text.append("## Pairs\n\n| prompt | comparison | X first | Y first | Y's score |\n|---|---|---|---|---|")
    for r in judgments:
        prompt = r["prompt"][:80].replace("|", "\\|").replace("\n", " ")
        text.append(f"| {prompt} | {r['comparison']} | {r['verdict_xy'] or '-'} | {r['verdict_yx'] or '-'} | "
                    f"{'-' if r['score'] is None else r['score']} |")
    return "\n".join(text) + "\n"


def write_outputs(folder: Path, judgments: list[dict], skipped: list[dict], names: list[str], endpoint,
                  template, n_boot: int, seed: int) -> dict:
    """judgments.jsonl, judge.json, judge.md and judge.png in `folder`; returns judge.json's content."""
    from pmcllama.plots import plot_judgments
    from pmcllama.stage import write_json

    kinds = list(dict.fromkeys(r["comparison"] for r in judgments)) or ["b_vs_a"]
    summaries = {k: summarize([r for r in judgments if r["comparison"] == k], n_boot, seed) for k in kinds}
    with open(folder / "judgments.jsonl", "w", encoding="utf-8") as f:
        for r in judgments:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    head = (f"Judge: `{endpoint.model}` at {endpoint.base_url}, template `{template.id}`, temperature 0; "
            f"{endpoint.calls} calls made, {endpoint.cached} answered from the cache.")
    (folder / "judge.md").write_text(markdown(summaries, judgments, skipped, names, head), encoding="utf-8")
    data = {"names": {"a": names[0], "b": names[1]}, "judge": {"base_url": endpoint.base_url,
            "model": endpoint.model, "template": template.id}, "comparisons": summaries, "skipped": skipped,
            "calls": endpoint.calls, "cached": endpoint.cached}
    write_json(folder / "judge.json", data)
    plot_judgments({titles(names)[k]: s for k, s in summaries.items()}, folder / "judge.png")
    for s in skipped:
        print(f"[judge] skipped {s['prompt'][:80]!r}: {s['why']}", flush=True)
    for r in judgments:
        if r["score"] is None:
            print(f"[judge] unjudged {r['prompt'][:80]!r} ({r['comparison']}): {r['failure']}", flush=True)
    print(f"\n{table(summaries, names)}", flush=True)
    return data
