"""Memory of cross-source near-dedup: the MinHash LSH index the corpus merge step keeps.

The merge step checks every kept document against the band buckets of all earlier ones
(`pmcllama.data.dedup.LSHIndex`), so its memory grows with the number of kept documents,
not with their text. This script feeds the index N documents of random band keys (what a
distinct document gives) and reports the resident-memory growth per document.

    python bench/bench_dedup_memory.py --docs 200000
"""
from __future__ import annotations

import argparse

import numpy as np

from pmcllama.data.dedup import LSHIndex, MinHasher


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=200_000, help="documents to index")
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (the corpus default)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (the corpus default)")
    a = p.parse_args(argv)
    hasher = MinHasher(a.threshold, a.num_perm)
    index = LSHIndex(hasher.bands)
    rng = np.random.default_rng(0)
    before = rss_bytes()
    for i in range(a.docs):
        index.check(rng.integers(0, 2**63, hasher.bands, dtype=np.int64), f"doc{i}")
    per_doc = (rss_bytes() - before) / a.docs
    print(f"{hasher.bands} bands: {per_doc:.0f} bytes per kept document; "
          f"{per_doc * 4.8e6 / 1e9:.1f} GB for the paper's 4.8M papers")


if __name__ == "__main__":
    main()
