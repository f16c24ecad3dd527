"""Run the corpus stage's per-file work through datatrove's executors.

Every `Job` (see `pmcllama.data.corpus_parts`) is one datatrove task (rank); the pipeline
is a single callable step that runs `process_job` for its rank. A part that is already
complete is skipped (the part folder is the completion marker), so a killed run resumes
where it stopped, whatever executor ran it. The stage hands in what the tasks need: its
`Pipeline` of steps and, for Slurm, `finish` (the stage rerun that merges and publishes).

- `local`: `LocalPipelineExecutor` with `workers` processes on this machine, its processes tied
  to this one (`pmcllama.data.local_executor`: a killed run leaves none behind);
- `slurm`: `SlurmPipelineExecutor`, one array task per job, plus a dependent one-task job
  that reruns the stage locally: all parts are done by then, so it only merges and publishes;
- `ray`: `RayPipelineExecutor` (needs `ray` installed), then the merge here.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from pmcllama.data.corpus_config import CorpusConfig
from pmcllama.data.corpus_parts import Job, Pipeline, process_job
from pmcllama.data.document import InputFile
from pmcllama.errors import UserError

# config fields that do not change what the per-file work writes
NOT_WORK = ("out", "executor", "workers", "slurm", "decontam_action")


def make_jobs(cfg: CorpusConfig, inputs: dict[str, list[InputFile]]) -> list[Job]:
    """One job per input (an S2ORC 2020 metadata shard and its pdf_parses shard are one input,
    so they are read together); a source with `max_documents` is one job (its files in order)."""
    jobs = []
    for src in cfg.sources:
        files = inputs[src.name]
        if src.max_documents is not None:
            jobs.append(Job(f"{src.name}/0", src.name, files))
        else:
            jobs.extend(Job(f"{src.name}/{k}", src.name, [f]) for k, f in enumerate(files))
    return jobs


def work_fingerprint(cfg: CorpusConfig, jobs: list[Job]) -> str:
    """Changes when the per-file work would write something else: config or input files."""
    conf = cfg.model_dump(mode="json", exclude=set(NOT_WORK))
    files = [[j.key, [[str(p), *_stat(p)] for f in j.files for p in f.paths()]] for j in jobs]
    return hashlib.sha256(json.dumps([conf, files], sort_keys=True).encode()).hexdigest()


def _stat(path: Path) -> list:
    try:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


def prepare_parts(parts: Path, fingerprint: str, log) -> int:
    """Keep the finished parts of an interrupted run with the same work; returns how many."""
    stamp = parts / "fingerprint"
    if parts.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        log("[corpus] config or inputs changed since the interrupted run: starting over")
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    return sum(1 for _ in parts.glob("*/*/stats.json"))


class CorpusTask:
    """datatrove pipeline step: rank r runs job r. A bad-input error (under on_error=stop) is
    written to parts/<job>.error for the caller to raise, instead of a worker traceback."""

    def __init__(self, cfg: CorpusConfig, jobs: list[Job], parts: Path, dtype: str, pipeline: Pipeline) -> None:
        self.cfg, self.jobs, self.parts, self.dtype, self.pipeline = cfg, jobs, parts, dtype, pipeline

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        job = self.jobs[rank]
        err = self.parts / (job.key + ".error")
        err.unlink(missing_ok=True)  # from an earlier run
        try:
            process_job(self.cfg, job, self.parts, self.dtype, self.pipeline)
        except UserError as e:
            err.parent.mkdir(parents=True, exist_ok=True)
            where = "" if e.path is None else e.path + (f":{e.line}" if e.line is not None else "") + ": "
            message = str(e)[len(where):] if str(e).startswith(where) else str(e)
            err.write_text(json.dumps({"message": message, "path": e.path, "line": e.line}), encoding="utf-8")
        return data


def raise_job_errors(jobs: list[Job], parts: Path) -> None:
    """Raise the first (in job order) bad-input error a task recorded."""
    for job in jobs:
        err = parts / (job.key + ".error")
        if err.is_file():
            e = json.loads(err.read_text(encoding="utf-8"))
            err.unlink()
            raise UserError(e["message"], e["path"], e["line"])


class MergeTask:
    """datatrove pipeline step (Slurm): `finish()`, the stage rerun with the local executor (all
    parts are done by then, so it merges and publishes)."""

    def __init__(self, finish: Callable[[], object]) -> None:
        self.finish = finish

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        self.finish()
        return data


def run_jobs(cfg: CorpusConfig, jobs: list[Job], parts: Path, dtype: str, pipeline: Pipeline, finish: Callable[[], object]) -> bool:
    """Run the unfinished jobs; True when they are all done here (False: submitted to Slurm, with
    `finish` as the job that runs after them)."""
    todo = [j for j in jobs if not (parts / j.key / "stats.json").is_file()]
    if not todo:
        return True
    task = CorpusTask(cfg, todo, parts, dtype, pipeline)
    logs = str(parts / "logs" / cfg.executor)
    if cfg.executor == "local":
        from pmcllama.data.local_executor import LocalExecutor

        LocalExecutor(pipeline=[task], tasks=len(todo), workers=min(cfg.workers, len(todo)),
                      logging_dir=logs, skip_completed=False).run()
        raise_job_errors(todo, parts)
        return True
    if cfg.executor == "ray":
        try:
            from datatrove.executor.ray import RayPipelineExecutor
            import ray  # noqa: F401
        except ImportError:
            raise UserError("executor 'ray' needs the ray package (pip install 'datatrove[ray]')") from None
        RayPipelineExecutor(pipeline=[task], tasks=len(todo), workers=cfg.workers, logging_dir=logs,
                            skip_completed=False).run()
        raise_job_errors(todo, parts)
        return True
    submit_slurm(cfg, task, len(todo), parts, finish)
    return False


def submit_slurm(cfg: CorpusConfig, task: CorpusTask, tasks: int, parts: Path, finish: Callable[[], object]):
    """Submit the per-file work as a Slurm array job and the merge as a job depending on it."""
    from datatrove.executor import SlurmPipelineExecutor

    opts = dict(cfg.slurm)
    opts.setdefault("time", "24:00:00")
    if "partition" not in opts:
        raise UserError("executor 'slurm' needs slurm.partition (and optionally time, cpus_per_task, "
                        "mem_per_cpu_gb, venv_path, sbatch_args)")
    work = SlurmPipelineExecutor(pipeline=[task], tasks=tasks, logging_dir=str(parts / "logs" / "slurm"),
                                 job_name="pmcllama-corpus", skip_completed=False, **opts)
    merge = SlurmPipelineExecutor(pipeline=[MergeTask(finish)], tasks=1, depends=work,
                                  logging_dir=str(parts / "logs" / "slurm-merge"),
                                  job_name="pmcllama-corpus-merge", **opts)
    merge.run()  # launches `work` first, then itself with a dependency on it
    return work, merge
