"""The corpus stage's executor and merge: the executor reaches a worker once, not once per task;
the dedup the merge runs is `filters.ExactDedup` and `dedup.NearDedup` themselves."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pmcllama.corpus import CorpusConfig, run
from pmcllama.data.dedup import NearDedup
from pmcllama.data.filters import ExactDedup, apply_filters
from pmcllama.data.readers import Document
from pmcllama.data.local_executor import LocalExecutor

WORDS = ("heart valve artery aorta insulin pancreas kidney liver lung blood pressure vein cell muscle nerve "
         "bone skin fever cough pain the of and in to with for is was by on").split()

COUNTING_STEP = """
import os


class Counting:
    '''A pipeline step that notes each time it is unpickled (in {folder}) and each rank it runs.'''

    def __init__(self, folder):
        self.folder = folder

    def __setstate__(self, state):
        self.__dict__.update(state)
        open(os.path.join(self.folder, f"unpickled-{{os.getpid()}}-{{id(self)}}"), "w").close()

    def __call__(self, data, rank=0, world_size=1):
        open(os.path.join(self.folder, f"rank-{{rank}}"), "w").close()
        return data
"""


def test_pool_workers_receive_the_executor_once_not_per_task(tmp_path, monkeypatch):
    (tmp_path / "counting_step.py").write_text(COUNTING_STEP.format(folder=tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + ":" + ":".join(sys.path))
    from counting_step import Counting

    runs = tmp_path / "runs"
    runs.mkdir()
    LocalExecutor(pipeline=[Counting(str(runs))], tasks=12, workers=2, logging_dir=str(tmp_path / "logs"),
                  skip_completed=False).run()
    names = sorted(p.name for p in runs.iterdir())
    assert [n for n in names if n.startswith("rank-")] == sorted(f"rank-{r}" for r in range(12))
    assert len([n for n in names if n.startswith("unpickled-")]) <= 2  # one per worker (12 before)


def paper(seed: int, n: int = 200) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, n))


def edited(text: str, seed: int) -> str:
    words = text.split()
    words[np.random.default_rng(seed).integers(len(words))] = "CHANGED"
    return " ".join(words)


def test_stage_dedup_is_the_filter_steps(tmp_path):
    """The stage keeps exactly what the ExactDedup + NearDedup steps keep, run over the same documents."""
    texts = [paper(0), paper(1), paper(0), edited(paper(1), 3), paper(2), edited(paper(2), 4), paper(2), paper(3)]
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a.jsonl", tmp_path / "b" / "in1.jsonl", tmp_path / "b" / "in2.jsonl"]
    for k, f in enumerate(files):  # two sources, three parts: duplicates across parts and sources
        f.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts) if i % 3 == k))
    order = [i for k in range(3) for i in range(len(texts)) if i % 3 == k]
    steps = [ExactDedup(), NearDedup()]
    expected = {f"d{i}": apply_filters(Document(texts[i], "s", f"d{i}", "f"), steps) for i in order}
    assert sorted(r for r in expected.values() if r) == ["duplicate", "duplicate", "near_duplicate", "near_duplicate"]
    cfg = CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", sources=[
        {"name": "a", "paths": [str(files[0])]}, {"name": "b", "paths": [str(tmp_path / "b")]}])
    out = run(cfg)
    excl = {e["id"]: e["reason"] for e in map(json.loads, (out / "exclusions.jsonl").read_text().splitlines())}
    assert excl == {d: r for d, r in expected.items() if r}
    report = json.loads((out / "corpus_report.json").read_text())

    def count(source: str, step: str, stat: str) -> int:  # datatrove's Stats: a number, or {total, n, ...} summed
        value = next(s for s in report["steps"][source] if s["name"] == step)["stats"].get(stat, 0)
        return value if isinstance(value, int) else value["total"]

    names = [s["name"] for s in report["steps"]["b"]]
    assert names[:2] == ["read", "normalize"] and names[-3:] == ["exact_dedup", "near_dedup", "write_shards"]
    assert [count(s, "read", "total") for s in "ab"] == [3, 5]
    assert count("b", "exact_dedup", "dropped_duplicate") == 2 and count("b", "near_dedup", "dropped") == 2
    assert count("b", "write_shards", "forwarded") == report["sources"]["b"]["kept"] == 1
    assert count("a", "tokenize", "tokens") >= count("a", "write_shards", "tokens") > 0


def test_tasks_log_to_their_files_not_to_stderr(tmp_path, capfd):
    for workers in (1, 2):
        logs = tmp_path / f"logs{workers}"
        LocalExecutor(pipeline=[lambda data, rank, world_size: data], tasks=3, workers=workers,
                      logging_dir=str(logs), skip_completed=False).run()
        assert "Launching pipeline" not in capfd.readouterr().err  # datatrove logs each task at INFO otherwise
        assert all("Launching pipeline for rank=" in (logs / "logs" / f"task_{r:05d}.log").read_text()
                   for r in range(3))


def test_parts_are_redone_when_a_corpus_step_is_switched_on(tmp_path):
    """The parts hold the keys of the corpus steps that are on: switching exact dedup on changes
    the work (an interrupted run's parts are discarded); the decontamination action does not."""
    from pmcllama.data.executor import make_jobs, work_fingerprint

    (tmp_path / "a.txt").write_text(paper(0))
    base = CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", dedup=False,
                        sources=[{"name": "s", "paths": [str(tmp_path / "a.txt")]}])
    jobs = make_jobs(base, {"s": []})

    def fingerprint(**kw) -> str:
        return work_fingerprint(base.model_copy(update=kw), jobs)

    assert fingerprint(dedup=True) != fingerprint() == fingerprint(decontam_action="mark", workers=2)
