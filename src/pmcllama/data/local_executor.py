"""datatrove's local executor, with processes that end when the corpus run does, even by SIGKILL.

datatrove's `LocalPipelineExecutor.run` starts a `multiprocess.Manager` (a server process forked
from the caller, for a queue of local ranks that only picks which task logs to the console, and a
completion counter) even for one worker, then a forkserver pool. Nothing ends that server but
`shutdown()` in the caller, so a SIGKILL of the run leaves it running for ever with parent 1. The
pool's workers run their task to the end first, and the forkserver waits for them: each holds the
forkserver's keep-alive pipe. Here one worker runs the tasks in this process; more run in a pool
of spawned workers, children of this process that the kernel kills when it dies; no Manager.

The executor (its pipeline, with every task's job) goes to each worker once, when it starts;
a task sends only its rank. (datatrove sends its bound `_run_for_rank`, the whole executor
pickled with dill, with every rank: with one task per input file that is work quadratic in
the number of files, done by this process while the workers compete with it for the CPUs.)
(Imported only when the local executor runs: datatrove's executors take half a second to import.)
"""
from __future__ import annotations

import ctypes
import signal
import sys

import multiprocess
from datatrove.executor import LocalPipelineExecutor
from datatrove.utils.stats import PipelineStats

PR_SET_PDEATHSIG = 1  # linux/prctl.h
QUIET = 1  # the local rank tasks run as: datatrove logs a rank other than 0 to stderr at ERROR only


_WORKER_EXECUTOR: "LocalExecutor | None" = None  # in a pool worker: the executor it runs ranks of


def die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when the process that started it ends (Linux),
    however it ends; a worker whose parent is already gone exits at once."""
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    parent = multiprocess.parent_process()
    if parent is not None and not parent.is_alive():
        sys.exit(1)


def _start_worker(executor: "LocalExecutor") -> None:
    """Pool initializer: tie the worker to its parent and keep the executor it was sent."""
    global _WORKER_EXECUTOR
    die_with_parent()
    _WORKER_EXECUTOR = executor


def _run_rank(rank: int) -> PipelineStats:
    return _WORKER_EXECUTOR._run_for_rank(rank, local_rank=QUIET)


class LocalExecutor(LocalPipelineExecutor):
    """`LocalPipelineExecutor` without its Manager, its pool workers tied to this process. Every
    task logs as datatrove's non-first local ranks do: errors on stderr, everything in the task's
    log file under `logging_dir/logs` (datatrove logs each task at INFO on stderr otherwise)."""

    def run(self) -> PipelineStats:
        self._launched = True
        self.save_executor_as_json()
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if self.workers == 1:
            stats = [self._run_for_rank(rank, local_rank=QUIET) for rank in ranks]
        else:
            with multiprocess.get_context("spawn").Pool(self.workers, initializer=_start_worker,
                                                        initargs=(self,)) as pool:
                stats = list(pool.imap_unordered(_run_rank, ranks))
        stats = sum(stats, start=PipelineStats())
        with self.logging_dir.open("stats.json", "wt") as statsfile:
            stats.save_to_disk(statsfile)
        return stats
