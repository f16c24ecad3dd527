"""The corpus report: corpus_report.json, summary.md and a token length histogram PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pmcllama.data.shards import TokenShards


def token_histogram(shards: dict[str, TokenShards], png: Path) -> dict:
    """Documents per token-length bin (log-spaced), per source; drawn into `png`."""
    lengths = {n: sh.index[:, 1] for n, sh in shards.items()}
    top = max((int(v.max()) for v in lengths.values() if v.size), default=1)
    edges = np.unique(np.logspace(0, np.log10(max(top, 2)) + 1e-9, 25).astype(np.int64))
    hist = {n: np.histogram(v, bins=edges)[0].tolist() for n, v in lengths.items()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for n, v in lengths.items():
        ax.hist(v, bins=edges, histtype="step", label=f"{n} ({v.size:,} docs)")
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens, EOS included)")
    ax.set_ylabel("documents")
    ax.set_title("token length per document")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {"bin_edges": edges.tolist(), "documents": hist,
            "percentiles": {n: _percentiles(v) for n, v in lengths.items()}}


def _percentiles(v: np.ndarray) -> dict:
    if not v.size:
        return {}
    return dict(zip(("p5", "p50", "p95", "max"), np.percentile(v, [5, 50, 95, 100]).astype(int).tolist()))


def throughput(stats: dict, wall: dict, tokens: int, chars: int) -> dict:
    """Tokens and characters per second: of the whole build, and of tokenization alone
    (its seconds summed over all parts, i.e. per worker)."""
    tok_s = sum(s.timings.get("tokenize_s", 0.0) for s in stats.values())
    return {**{k: round(v, 3) for k, v in wall.items()}, "tokenize_s_summed": round(tok_s, 3),
            "tokens_per_s": round(tokens / wall["total_s"], 1) if wall["total_s"] else None,
            "chars_per_s": round(chars / wall["total_s"], 1) if wall["total_s"] else None,
            "tokenize_tokens_per_s_per_worker": round(tokens / tok_s, 1) if tok_s else None}


def summary_lines(report: dict) -> list[str]:
    """A readable summary (also written as summary.md)."""
    t = report["total"]
    lines = [f"# Corpus: {t['documents_kept']:,} of {t['documents_in']:,} documents kept, {t['tokens']:,} tokens", "",
             "| source | files | docs in | kept | dropped | tokens | dropped by reason |", "|---|---|---|---|---|---|---|"]
    for name, s in report["sources"].items():
        reasons = ", ".join(f"{k} {v:,}" for k, v in s["dropped_by_reason"].items()) or "none"
        lines.append(f"| {name} | {s['files']} | {s['documents_in']:,} | {s['kept']:,} | {s['dropped']:,} | "
                     f"{s['tokens']:,} | {reasons} |")
    dup = sum(s["dropped_by_reason"].get(r, 0) for s in report["sources"].values()
              for r in ("duplicate", "near_duplicate"))
    lines += ["", f"Duplicates removed (exact + near): {dup:,}"]
    if "decontamination" in report:
        d = report["decontamination"]
        found = ", ".join(f"{b}: {v['items_found']} of {v['items']} items" for b, v in d["benchmarks"].items())
        lines.append(f"Contaminated documents ({d['ngram']}-gram, {d['action']}): {d['documents']:,} ({found})")
    skipped = sum(len(s["skipped_inputs"]) for s in report["sources"].values())
    if skipped:
        lines.append(f"Unreadable inputs skipped: {skipped} (listed in corpus_report.json and exclusions.jsonl)")
    th = report["throughput"]
    lines.append(f"Throughput: {th['tokens_per_s']:,} tokens/s overall ({th['total_s']} s wall); tokenizer "
                 f"{th['tokenize_tokens_per_s_per_worker']:,} tokens/s per worker")
    lines.append("Token lengths: token_lengths.png")
    return lines + skipped_lines(report.get("skipped_inputs", []), report.get("skipped_inputs_count", 0))


def skipped_lines(skipped: list[dict], count: int, shown: int = 100) -> list[str]:
    """The files of the input folders that were not read, one per line (the first `shown`)."""
    if not count:
        return []
    lines = ["", f"## Skipped inputs: {count:,} file(s) in the input folders not read", "",
             "| source | path | reason | detail |", "|---|---|---|---|"]
    lines += [f"| {s['source']} | {s['path']} | {s['reason']} | {s['detail']} |" for s in skipped[:shown]]
    if count > min(shown, len(skipped)):
        lines.append(f"\n... and {count - min(shown, len(skipped)):,} more (corpus_report.json lists the first "
                     f"{len(skipped):,})")
    return lines
