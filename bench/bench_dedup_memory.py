"""Memory of cross-source dedup in the corpus merge: an index of every kept document, against
the merge's way (the keys that occur twice or more found on disk first, `pmcllama.data.repeats`,
and only those indexed).

N documents of random band keys (what distinct documents give), a share of them near copies of
an earlier one, go through the near-dedup index and the exact-dedup digest set, each side in a
fresh process (its resident-memory growth is the figure); both sides must drop the same
documents.

    python bench/bench_dedup_memory.py --docs 200000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "dedup_memory.json"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def corpus(n: int, bands: int, copies: float) -> tuple[np.ndarray, np.ndarray]:
    """(band keys (n, bands) uint64, digests (n,) uint64): distinct documents and near copies."""
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, (n, bands), dtype=np.int64).astype(np.uint64)
    digests = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    later = rng.choice(np.arange(n // 2, n), int(n * copies), replace=False)
    keys[later, 0] = keys[later - n // 2, 0]  # a near copy shares one band with an earlier document
    return keys, digests


def side(way: str, n: int, copies: float) -> dict:
    from pmcllama.data.dedup import LSHIndex, MinHasher, band_values
    from pmcllama.data.filters import ExactDedup
    from pmcllama.data.repeats import RepeatFinder

    bands = MinHasher().bands
    keys, digests = corpus(n, bands, copies)
    hexes = [int(d).to_bytes(8, "little").hex() * 2 for d in digests.tolist()]
    before, t0 = rss_bytes(), time.perf_counter()
    index, exact = LSHIndex(bands), ExactDedup()
    if way == "repeats":
        with tempfile.TemporaryDirectory() as tmp:
            near, dup = RepeatFinder(Path(tmp) / "n"), RepeatFinder(Path(tmp) / "e")
            for row, h in zip(keys, hexes):
                near.add(band_values(row))
                dup.add(ExactDedup.values(h))
            index.restrict(near.repeated())
            exact.restrict(dup.repeated())
    dropped = sum(index.check(row, f"d{i}") is not None or exact.check(h) is not None
                  for i, (row, h) in enumerate(zip(keys, hexes)))
    return {"side": way, "docs": n, "bands": bands, "dropped": dropped, "seconds": round(time.perf_counter() - t0, 2),
            "bytes_per_doc": round((rss_bytes() - before) / n, 1), "indexed_docs": len(index.ids)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=200_000, help="documents (default 200,000)")
    p.add_argument("--copies", type=float, default=0.01, help="share of them that are near copies (default 0.01)")
    p.add_argument("--side", choices=["full", "repeats"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.side:
        print(json.dumps(side(a.side, a.docs, a.copies)))
        return
    rows = []
    for way in ("full", "repeats"):
        out = subprocess.run([sys.executable, __file__, "--side", way, "--docs", str(a.docs), "--copies",
                              str(a.copies)], capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    full, repeats = rows
    assert full["dropped"] == repeats["dropped"], "the two ways dropped different documents"
    for r in rows:
        print(f"{r['side']:8s} {r['bytes_per_doc']:7.1f} bytes per document, {r['indexed_docs']:,} indexed, "
              f"{r['seconds']} s; {r['bytes_per_doc'] * 4.8e6 / 1e9:.2f} GB for the paper's 4.8M papers")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"docs": a.docs, "copies": a.copies, "sides": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
