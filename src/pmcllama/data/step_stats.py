"""datatrove's own statistics (`datatrove.utils.stats.Stats`) for each step of the corpus pipeline.

Every step (read, normalize, each cleaning and quality step, the dedup keys and benchmark
matching, tokenize; in the merge exact dedup, near dedup, decontamination and the shard
writer) has one `Stats` named after it: its time (datatrove's `TimingStats`, per document
unless the step says otherwise) and datatrove's counters: `total` documents seen,
`forwarded` (kept), `dropped` and `dropped_<reason>`, and `tokens` where it applies. A part
saves them as dicts (`to_list`); the merge sums them with datatrove's `Stats.__add__`; the
corpus report lists them per source under `steps`, in pipeline order.
"""
from __future__ import annotations

from typing import Any, Callable

from datatrove.utils.stats import Stats


def step_name(step: Callable) -> str:
    """A step's name: its function's `__name__` (`too_short(50)`), else its class name."""
    return getattr(step, "__name__", None) or type(step).__name__


class StepStats:
    """The `Stats` of each step, by name, in the order the steps first ran."""

    def __init__(self) -> None:
        self.steps: dict[str, Stats] = {}

    def __getitem__(self, name: str) -> Stats:
        if name not in self.steps:
            self.steps[name] = Stats(name)
        return self.steps[name]

    def verdict(self, name: str, reason: str | None) -> None:
        """Count one document the step `name` kept (reason None) or dropped."""
        st = self[name]
        st["total"].update(1)
        if reason is None:
            st["forwarded"].update(1)
        else:
            st["dropped"].update(1)
            st[f"dropped_{reason}"].update(1)

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, timed under the step `name` (no verdict: see `run`)."""
        with self[name].time_stats:
            return fn(*args)

    def run(self, step: Callable, doc) -> str | None:
        """A filter step on one document: timed, its verdict counted; returns the verdict."""
        name = step_name(step)
        reason = self.call(name, step, doc)
        self.verdict(name, reason)
        return reason

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.steps.values()]

    def add(self, dumped: list[dict]) -> None:
        """Add the stats a part saved (`to_list`) to these, step by step."""
        for d in dumped:
            s = Stats.from_dict(d)
            self.steps[s.name] = self.steps[s.name] + s if s.name in self.steps else s
