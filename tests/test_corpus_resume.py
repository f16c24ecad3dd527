"""Corpus stage at scale: parallel workers, resume after a kill, executors, the report."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import pmcllama
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


@pytest.mark.slow
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

    def flaky(c, job, parts, dtype, pipeline):
        if job.key == "books/2" and not any(k == "killed" for k in done):
            done.append("killed")
            raise KeyboardInterrupt  # the run dies in the middle of the third file
        if not (parts / job.key / "stats.json").is_file():
            done.append(job.key)
        real(c, job, parts, dtype, pipeline)

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


MARK = "PMCLLAMA_TEST_RUN"  # environment variable naming the run; every process it starts inherits it


def marked(run_id: str) -> list[psutil.Process]:
    """The live processes of the run `run_id`: the CLI and all it started (found by their environment)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == run_id:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def start(args: list[str], run_id: str, log: Path) -> subprocess.Popen:
    """`python args...` with this checkout's package, marked as `run_id`, its output written to `log`."""
    env = {**os.environ, MARK: run_id, "PYTHONPATH": str(Path(pmcllama.__file__).parents[1])}
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=fh, stderr=subprocess.STDOUT)


def start_cli(config: Path, run_id: str) -> subprocess.Popen:
    return start(["-m", "pmcllama", "corpus", "--config", str(config)], run_id, config.parent / f"{run_id}.log")


def assert_all_gone(run_id: str) -> None:
    """Within a few seconds no process of the run is left (those that are get killed, then reported)."""
    if not wait_for(lambda: not marked(run_id), 10):
        left = marked(run_id)
        described = [f"{p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())[:120]}" for p in left]
        for p in left:
            p.kill()
        pytest.fail(f"processes of the {run_id} run left behind: {described}")


@pytest.mark.slow
def test_sigkill_leaves_no_process_behind_and_the_rerun_finishes(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):  # well under a second of work each: the run's start (imports) is most of its time
        (folder / f"f{k}.txt").write_text("\n\n".join(" ".join(rng.choice(WORDS, 80)) for _ in range(300)))
    config = tmp_path / "corpus.yaml"
    config.write_text(json.dumps({"out": str(tmp_path / "out"), "tokenizer": "tiny-llama", "workers": 2,
                                  "sources": [{"name": "s", "paths": [str(folder)], "split_paragraphs": True}]}))
    parts = tmp_path / "out.partial" / "parts" / "s"
    killed = start_cli(config, "killed")
    try:
        assert wait_for(lambda: any(parts.glob("*/stats.json")) or killed.poll() is not None, 120)
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()
    finally:
        killed.send_signal(signal.SIGKILL)  # in the middle of the work: a part is done, the others are not
        killed.wait()
    assert_all_gone("killed")
    rerun = start_cli(config, "rerun")
    assert rerun.wait(120) == 0, (tmp_path / "rerun.log").read_text()
    assert_all_gone("rerun")  # a normal exit leaves nothing either
    report = json.loads((tmp_path / "out" / "corpus_report.json").read_text())
    assert 1 <= report["executor"]["resumed_parts"] < 6
    assert report["total"]["documents_in"] == 6 * 300


HOLD = """
import os, sys, time
from pmcllama.data.local_executor import LocalExecutor

def hold(data, rank, world_size):
    open(os.path.join(sys.argv[1], str(rank)), "w").write(str(os.getpid()))
    time.sleep(600)

if __name__ == "__main__":
    LocalExecutor(pipeline=[hold], tasks=2, workers=2, logging_dir=sys.argv[1] + "/logs").run()
"""


def test_executor_workers_die_in_the_middle_of_a_task_with_the_run(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    proc = start([str(script), str(tmp_path)], "hold", tmp_path / "hold.log")
    try:
        assert wait_for(lambda: all((tmp_path / n).is_file() for n in "01") or proc.poll() is not None, 60)
        assert proc.poll() is None, (tmp_path / "hold.log").read_text()
    finally:
        proc.send_signal(signal.SIGKILL)  # both workers are in the middle of a ten-minute task
        proc.wait()
    assert_all_gone("hold")
