"""Corpus stage at scale: parallel workers, resume after a kill, executors, the report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pmcllama.data.executor as executor
from pmcllama.corpus import CorpusConfig, run
from pmcllama.data.shards import read_corpus
from pmcllama.errors import UserError

WORDS = ("heart valve artery aorta insulin pancreas kidney liver lung blood pressure vein cell muscle nerve "
         "bone skin fever cough pain the of and in to with for is was by on").split()


def make_inputs(root: Path, n_files: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    folder = root / "books"
    folder.mkdir()
    for k in range(n_files):
        rows = [{"id": f"f{k}-{i}", "text": " ".join(rng.choice(WORDS, 60 + i))} for i in range(5)]
        (folder / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "notes.txt").write_text(" ".join(rng.choice(WORDS, 80)), encoding="utf-8")
    return [{"name": "books", "paths": [str(folder)]}, {"name": "notes", "paths": [str(root / "notes.txt")]}]


def cfg(root: Path, out: str = "out", **kw) -> CorpusConfig:
    return CorpusConfig(out=str(root / out), tokenizer="tiny-llama", sources=make_inputs(root) if not
                        (root / "books").exists() else [{"name": "books", "paths": [str(root / "books")]},
                                                        {"name": "notes", "paths": [str(root / "notes.txt")]}], **kw)


def tokens(out: Path) -> dict:
    _, shards = read_corpus(out)
    return {n: (np.asarray(s.tokens).tolist(), s.index.tolist()) for n, s in shards.items()}


def test_workers_give_the_same_shards(tmp_path):
    one = run(cfg(tmp_path, "one"))
    two = run(cfg(tmp_path, "two", workers=2))
    assert tokens(one) == tokens(two)
    assert (one / "exclusions.jsonl").read_text() == (two / "exclusions.jsonl").read_text()
    report = json.loads((two / "corpus_report.json").read_text())
    assert report["executor"] == {"executor": "local", "workers": 2, "parts": 5, "resumed_parts": 0}


def test_killed_run_resumes_without_redoing_parts(tmp_path, monkeypatch):
    clean = tokens(run(cfg(tmp_path, "clean")))
    done: list[str] = []
    real = executor.process_job

    def flaky(c, job, parts, dtype):
        if job.key == "books/2" and not any(k == "killed" for k in done):
            done.append("killed")
            raise KeyboardInterrupt  # the run dies in the middle of the third file
        if not (parts / job.key / "stats.json").is_file():
            done.append(job.key)
        real(c, job, parts, dtype)

    monkeypatch.setattr(executor, "process_job", flaky)
    c = cfg(tmp_path, "out")
    with pytest.raises(KeyboardInterrupt):
        run(c)
    partial = tmp_path / "out.partial" / "parts"
    assert sorted(p.parent.name + "/" + p.name for p in partial.glob("*/*") if (p / "stats.json").is_file()) == [
        "books/0", "books/1"]
    assert done == ["books/0", "books/1", "killed"]
    out = run(c)
    assert done == ["books/0", "books/1", "killed", "books/2", "books/3", "notes/0"]  # nothing redone
    assert tokens(out) == clean  # nor duplicated
    assert not (tmp_path / "out.partial").exists() and not (out / "parts").exists()
    assert json.loads((out / "corpus_report.json").read_text())["executor"]["resumed_parts"] == 2


def test_changed_config_discards_interrupted_parts(tmp_path, monkeypatch):
    c = cfg(tmp_path)
    partial = tmp_path / "out.partial" / "parts"
    partial.mkdir(parents=True)
    (partial / "fingerprint").write_text("something else")
    (partial / "books").mkdir()
    stale = partial / "books" / "0"
    stale.mkdir()
    (stale / "stats.json").write_text("{}")  # would break the merge if it were kept
    out = run(c)
    assert read_corpus(out)[0]["counts"]["documents_in"] == 21


def test_report_files(tmp_path):
    out = run(cfg(tmp_path))
    report = json.loads((out / "corpus_report.json").read_text())
    assert report["total"]["documents_kept"] + report["total"]["documents_dropped"] == report["total"]["documents_in"]
    th = report["throughput"]
    assert th["tokens_per_s"] > 0 and th["tokenize_tokens_per_s_per_worker"] > 0 and th["total_s"] > 0
    hist = report["token_lengths"]
    assert sum(hist["documents"]["books"]) == report["sources"]["books"]["kept"] == 20
    assert (out / "token_lengths.png").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "| books | 4 | 20 | 20 | 0 |" in summary and "Duplicates removed" in summary


def test_slurm_submits_work_then_merge(tmp_path, monkeypatch):
    launched = []
    from datatrove.executor import SlurmPipelineExecutor

    def fake_run(self):
        if self.depends is not None and not getattr(self.depends, "done", False):
            self.depends.run()
        self.done = True
        launched.append((self.job_name, self.tasks, self.partition))

    monkeypatch.setattr(SlurmPipelineExecutor, "run", fake_run)
    out = run(cfg(tmp_path, executor="slurm", slurm={"partition": "cpu", "time": "1:00:00"}))
    assert launched == [("pmcllama-corpus", 5, "cpu"), ("pmcllama-corpus-merge", 1, "cpu")]
    assert not out.exists() and (tmp_path / "out.partial" / "parts" / "fingerprint").is_file()
    with pytest.raises(UserError, match="slurm.partition"):
        run(cfg(tmp_path, out="o2", executor="slurm"))


def test_bad_input_stop_in_a_task_then_fixed(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = " ".join(WORDS)
    (folder / "a.jsonl").write_text(json.dumps({"text": good}) + "\n", encoding="utf-8")
    (folder / "b.jsonl").write_text(json.dumps({"text": good[::-1]}) + '\n{"text": \n', encoding="utf-8")
    c = CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama",
                     sources=[{"name": "s", "paths": [str(folder)]}])
    with pytest.raises(UserError, match="line is not JSON") as err:
        run(c)
    assert err.value.path == str(folder / "b.jsonl") and err.value.line == 2
    (folder / "b.jsonl").write_text(json.dumps({"text": good[::-1]}) + "\n", encoding="utf-8")
    out = run(c)  # the input changed: the interrupted parts are discarded, and the run succeeds
    assert read_corpus(out)[1]["s"].num_docs == 2
