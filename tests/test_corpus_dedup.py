"""Near-duplicate removal (MinHash LSH) and exact dedup, alone and across corpus sources."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pmcllama.corpus import CorpusConfig, run
from pmcllama.data.dedup import LSHIndex, MinHasher, NearDedup, jaccard, lsh_params
from pmcllama.data.readers import Document

WORDS = ("heart valve artery aorta insulin pancreas kidney liver lung blood pressure vein cell muscle nerve "
         "bone skin fever cough pain the of and in to with for is was by on").split()


def paper(seed: int, n: int = 300) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n))


def edit(text: str, n_changes: int, seed: int = 1) -> str:
    words = text.split()
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(words), n_changes, replace=False):
        words[i] = "CHANGED"
    return " ".join(words)


def test_lsh_params_fit_threshold():
    for t in (0.5, 0.8, 0.9):
        b, r = lsh_params(t, 128)
        assert b * r <= 128
        assert abs((1 / b) ** (1 / r) - t) < 0.1  # the S-curve's midpoint sits near the threshold


def test_signature_estimates_jaccard_and_is_deterministic():
    h = MinHasher(num_perm=256)
    a, b = paper(0), edit(paper(0), 10)
    est = float((h.signature(a) == h.signature(b)).mean())
    assert abs(est - jaccard(h, a, b)) < 0.1
    assert (h.signature(a) == MinHasher(num_perm=256).signature(a)).all()
    assert h.signature("!!! ...") is None and h.keys("").size == 0
    assert h.signature("two words") is not None  # fewer words than a shingle: one shingle


def test_near_duplicates_dropped_different_kept():
    dedup = NearDedup(threshold=0.8)
    base = paper(0)
    docs = [Document(base, "s", "orig", "f"), Document(edit(base, 3), "s", "few-words-changed", "f"),
            Document(base.upper() + " !", "s", "case-and-punct", "f"), Document(paper(1), "s", "other", "f"),
            Document(edit(base, 150), "s", "half-rewritten", "f")]
    assert jaccard(dedup.hasher, docs[0].text, docs[1].text) > 0.9
    assert jaccard(dedup.hasher, docs[0].text, docs[4].text) < 0.3
    results = [(d.id, dedup(d), dedup.last_match) for d in docs]
    assert results == [("orig", None, None), ("few-words-changed", "near_duplicate", "orig"),
                       ("case-and-punct", "near_duplicate", "orig"), ("other", None, None),
                       ("half-rewritten", None, None)]


def test_lsh_index_records_only_kept():
    index = LSHIndex(2)
    assert index.check(np.array([1, 2], dtype=np.uint64), "a") is None
    assert index.check(np.array([3, 2], dtype=np.uint64), "b") == "a"
    assert index.check(np.array([3, 4], dtype=np.uint64), "c") is None  # b was not recorded
    assert index.check(np.zeros(0, dtype=np.uint64), "d") is None


def test_repeat_finder_gives_exactly_the_values_seen_twice_over_several_flushes(tmp_path):
    from pmcllama.data.repeats import RepeatFinder, contains

    rng = np.random.default_rng(1)
    values = np.concatenate([rng.integers(0, 2**63, 150_000, dtype=np.int64).astype(np.uint64) * np.uint64(2),
                             rng.integers(0, 3000, 50_000).astype(np.uint64)])  # small ones: many repeats
    rng.shuffle(values)
    finder = RepeatFinder(tmp_path / "r")
    for chunk in np.array_split(values, 997):
        finder.add(chunk)
    got = finder.repeated()
    uniq, counts = np.unique(values, return_counts=True)
    assert np.array_equal(got, uniq[counts > 1]) and got.size > 2000
    assert finder.added == values.size and not (tmp_path / "r").exists()
    probe = np.array([got[0], got[-1], np.uint64(2**64 - 1)], dtype=np.uint64)
    assert contains(got, probe).tolist() == [True, True, False]


def test_restricted_dedup_decides_as_the_full_index_and_holds_only_candidates(tmp_path):
    """Chains (a~b, b~c, c not ~a), exact copies and 5,000 distinct documents: the steps restricted
    to the repeated keys drop the same documents as the unrestricted ones, while indexing only
    the documents that share a key with another."""
    from pmcllama.data.dedup import band_values
    from pmcllama.data.filters import ExactDedup
    from pmcllama.data.repeats import RepeatFinder

    rng = np.random.default_rng(2)
    bands = 4
    docs = [rng.integers(0, 2**62, bands, dtype=np.int64).astype(np.uint64) for _ in range(5000)]
    for i in range(0, 600, 3):  # chains: i+1 shares band 0 with i, i+2 shares band 1 with i+1 only
        docs[i + 1][0] = docs[i][0]
        docs[i + 2][1] = docs[i + 1][1]
    docs += [docs[k].copy() for k in rng.integers(0, 5000, 300)]  # copies of earlier documents
    texts = [f"text {i % 4000}" for i in range(len(docs))]  # 1,300 exact repeats
    finder_near, finder_exact = RepeatFinder(tmp_path / "n"), RepeatFinder(tmp_path / "e")
    for keys, text in zip(docs, texts):
        finder_near.add(band_values(keys))
        finder_exact.add(ExactDedup.values(ExactDedup.key(text)))
    full, restricted = LSHIndex(bands), LSHIndex(bands)
    restricted.restrict(finder_near.repeated())
    exact_full, exact_restricted = ExactDedup(), ExactDedup()
    exact_restricted.restrict(finder_exact.repeated())
    for i, (keys, text) in enumerate(zip(docs, texts)):
        assert restricted.check(keys, f"d{i}") == full.check(keys, f"d{i}"), i
        digest = ExactDedup.key(text)
        assert exact_restricted.check(digest) == exact_full.check(digest), i
    near_dropped = len(docs) - len(full.ids)
    assert near_dropped >= 300 + 200  # the copies and the middle of each chain
    assert len(restricted.ids) < 1200 and len(full.ids) > 4700
    assert len(exact_restricted.seen) == 1300 and len(exact_full.seen) == 4000


@pytest.mark.parametrize("threshold,dropped", [(0.8, 1), (0.995, 0)])
def test_stage_same_paper_from_pmc_and_s2orc(tmp_path, threshold, dropped):
    body = paper(7)
    pmc = tmp_path / "pmc.jsonl"
    pmc.write_text(json.dumps({"id": "PMC555", "text": "Statins and stroke\n" + body}) + "\n" +
                   json.dumps({"id": "PMC556", "text": "Another paper\n" + paper(8)}) + "\n", encoding="utf-8")
    s2 = tmp_path / "s2orc.jsonl"  # the same paper in S2ORC's layout, its text split differently
    rows = [{"paper_id": "77", "metadata": {"title": "Statins and stroke", "pmc_id": "PMC555"}, "abstract": [],
             "body_text": [{"text": body[:600], "section": ""}, {"text": body[601:], "section": ""}]},
            {"paper_id": "78", "metadata": {"title": "Only here", "pmc_id": "PMC9"}, "abstract": [],
             "body_text": [{"text": paper(9), "section": "Intro"}]}]
    s2.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dup = tmp_path / "copy.jsonl"
    dup.write_text(json.dumps({"id": "exact", "text": "Another paper\n" + paper(8)}) + "\n" +
                   json.dumps({"id": "new", "text": paper(10)}) + "\n", encoding="utf-8")
    cfg = CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", near_dedup={"threshold": threshold},
                       sources=[{"name": "pmc", "paths": [str(pmc)]},
                                {"name": "s2orc", "paths": [str(s2)], "format": "s2orc"},
                                {"name": "copy", "paths": [str(dup)]}])
    out = run(cfg)
    stats = json.loads((out / "stats.json").read_text())["sources"]
    assert stats["pmc"]["kept"] == 2 and stats["s2orc"]["kept"] == 2 - dropped
    assert stats["s2orc"]["dropped_by_reason"] == ({"near_duplicate": 1} if dropped else {})
    assert stats["copy"]["dropped_by_reason"] == {"duplicate": 1} and stats["copy"]["kept"] == 1
    excl = [json.loads(x) for x in (out / "exclusions.jsonl").read_text().splitlines()]
    expected = [("s2orc", "near_duplicate", "near-duplicate of PMC555")] if dropped else []
    assert [(e["source"], e["reason"], e.get("detail")) for e in excl] == expected + [("copy", "duplicate", None)]
    index = json.loads((out / "corpus_report.json").read_text())["dedup_index"]  # 6 documents, 5 distinct
    assert index["exact_dedup"] == {"repeated_keys": 1, "indexed_documents": 1}  # the copied text only
    assert index["near_dedup"]["indexed_documents"] == 1 + dropped  # + PMC555, which S2ORC's copy matches
