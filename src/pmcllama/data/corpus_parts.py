"""The corpus stage's two phases: per-file work (parallel, resumable) and the merge.

The steps are the stage's (`pmcllama.corpus.PIPELINE`, a `Pipeline`); this module runs them.
Phase 1, one `Job` per input file or S2ORC shard pair (or per source, with `max_documents`):
read -> normalise -> the source's cleaning and quality steps -> the key of every corpus
step (exact digest, MinHash band keys, benchmark matches) of every kept document ->
tokenize -> a part folder

    parts/<source>/<k>/tokens.bin, index.npy   the part's documents (the shard format)
    parts/<source>/<k>/docs.jsonl              per document: id, file, line, and each corpus step's key
    parts/<source>/<k>/exclusions.jsonl        what the quality steps dropped (reason and detail)
    parts/<source>/<k>/stats.json              its counts, timings and datatrove Stats per step

written under `<k>.tmp` and renamed when complete, so a killed run redoes only the parts that
were not finished. Phase 2 (`Merger`, one process, streaming) goes through the parts in source
and file order, runs each corpus step's `check` on every document (exact and near duplicates
across all sources, the first copy wins; contaminated documents), and copies the kept
documents' tokens into the final shards.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np

from pmcllama.data.corpus_config import CorpusConfig, CorpusSource
from pmcllama.data.decontam import Decontaminate
from pmcllama.data.filters import apply_filters, detail_of, normalize
from pmcllama.data.document import Document, InputFile, stop_error
from pmcllama.data.readers import read_file
from pmcllama.data.repeats import RepeatFinder
from pmcllama.data.shards import ShardWriter, TokenShards
from pmcllama.data.step_stats import StepStats
from pmcllama.errors import UserError

BATCH = 256
COPY_BATCH = 1024
MAX_SKIPPED_LISTED = 1000


@dataclass
class Job:
    """One unit of per-file work: some files of one source, written to parts/<key>."""

    key: str
    source: str
    files: list[InputFile]


@dataclass
class Pipeline:
    """The corpus steps, listed by the stage (`pmcllama.corpus`): `document(cfg, source)` gives a
    source's cleaning and quality steps (and its boilerplate step, for the counts), run per
    document by the parallel work; `corpus(cfg)` the steps across the whole corpus (exact and
    near dedup, decontamination), each in two halves: `key(text)` in the parallel work (saved
    in docs.jsonl under the step's `field`) and `check(key, doc_id)` in the merge, in order."""

    document: Callable[[CorpusConfig, CorpusSource], tuple[list, object]]
    corpus: Callable[[CorpusConfig], list]


@dataclass
class SourceStats:
    files: int = 0
    documents_in: int = 0
    kept: int = 0
    dropped_by_reason: Counter = field(default_factory=Counter)
    tokens: int = 0
    chars: int = 0
    events: Counter = field(default_factory=Counter)  # not documents: deleted citations, removed lines, ...
    skipped: list = field(default_factory=list)  # unreadable inputs skipped under on_error=skip
    timings: Counter = field(default_factory=Counter)  # read_s, tokenize_s (summed over parts)
    steps: StepStats = field(default_factory=StepStats)  # datatrove's Stats of each pipeline step

    def as_dict(self) -> dict:
        return {"files": self.files, "documents_in": self.documents_in, "kept": self.kept,
                "dropped": sum(self.dropped_by_reason.values()),
                "dropped_by_reason": dict(sorted(self.dropped_by_reason.items())),
                "tokens": self.tokens, "chars": self.chars,
                "events": {k: v for k, v in sorted(self.events.items()) if v}, "skipped_inputs": self.skipped}

    def add_part(self, d: dict) -> None:
        """Add a part's counts (phase 1) to the source's."""
        self.files += d["files"]
        self.documents_in += d["documents_in"]
        self.dropped_by_reason.update(d["dropped_by_reason"])
        self.events.update(d["events"])
        self.skipped.extend(d["skipped_inputs"][:MAX_SKIPPED_LISTED - len(self.skipped)])
        self.timings.update(d["timings"])
        self.steps.add(d["steps"])


def exclusion(doc: Document, reason: str, detail: str = "") -> str:
    rec = {"source": doc.source, "id": doc.id, "file": doc.file, "line": doc.line, "reason": reason}
    if detail:
        rec["detail"] = detail
    if doc.text:
        rec["preview"] = doc.text[:100]
    return json.dumps(rec, ensure_ascii=False) + "\n"


# --- phase 1 ------------------------------------------------------------------------------

_CACHE: dict = {}  # per process: tokenizer and benchmark index, loaded once for all jobs


def cached(key: tuple, make):
    """`make()`, made once per process under `key` (a tokenizer, a benchmark index)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def tokenizer(name: str):
    """The tokenizer, loaded once per process."""
    from pmcllama.models import load_tokenizer

    return cached(("tok", name), lambda: load_tokenizer(name))


def _documents(src: CorpusSource, files: list[InputFile], stats: SourceStats) -> Iterator[Document]:
    """The documents of the job's files (step `read`: timed per document; unreadable and
    unwanted records count as its drops)."""
    n = 0
    for inp in files:
        stats.files += 0 if inp.missing else len(inp.paths())
        docs = read_file(inp, src, stats.events)
        while (doc := stats.steps.call("read", next, docs, None)) is not None:
            if src.max_documents is not None and n >= src.max_documents:
                return
            n += 1
            stats.steps.verdict("read", doc.error or doc.drop)
            yield doc


class _Part:
    """Writes one part folder: tokens, document records, exclusions."""

    def __init__(self, folder: Path, dtype: str, tok, steps: StepStats) -> None:
        self.writer = ShardWriter(folder, dtype)
        self.steps = steps
        self.docs = open(folder / "docs.jsonl", "w", encoding="utf-8")
        self.excl = open(folder / "exclusions.jsonl", "w", encoding="utf-8")
        self.tok, self.texts, self.records = tok, [], []
        self.tokenize_s = 0.0

    def add(self, text: str, record: dict) -> None:
        self.texts.append(text)
        self.records.append(record)
        if len(self.texts) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.texts:
            return
        t0 = time.perf_counter()
        st = self.steps["tokenize"]
        st.time_stats.unit = "batch"
        with st.time_stats:
            ids = self.tok(self.texts, add_special_tokens=False, verbose=False)["input_ids"]
            eos = self.tok.eos_token_id
            docs = [list(x) + [eos] for x in ids]
            self.writer.add(docs)
        self.tokenize_s += time.perf_counter() - t0
        st["total"].update(len(docs))
        st["tokens"].update(sum(len(d) for d in docs))
        self.docs.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records))
        self.texts, self.records = [], []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.docs.close()
        self.excl.close()


def process_job(cfg: CorpusConfig, job: Job, parts: Path, dtype: str, pipeline: Pipeline) -> None:
    """Phase 1 for one job; does nothing when its part is already complete."""
    out = parts / job.key
    if (out / "stats.json").is_file():
        return
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = next(s for s in cfg.sources if s.name == job.source)
    tok = tokenizer(cfg.tokenizer)
    corpus_steps = pipeline.corpus(cfg)
    steps, strip = pipeline.document(cfg, src)
    stats = SourceStats()
    part = _Part(tmp, dtype, tok, stats.steps)
    t0 = time.perf_counter()
    for doc in _documents(src, job.files, stats):
        stats.documents_in += 1
        reason, detail = _check(doc, steps, cfg.on_error, stats)
        if reason:
            stats.dropped_by_reason[reason] += 1
            part.excl.write(exclusion(doc, reason, detail))
            continue
        part.add(doc.text, _record(doc, corpus_steps, stats.steps))
    part.close()
    if strip is not None:
        stats.events.update({f"removed_{k}": v for k, v in strip.removed.items()})
    stats.timings.update({"tokenize_s": part.tokenize_s, "work_s": time.perf_counter() - t0})
    d = stats.as_dict()
    d["timings"] = dict(stats.timings)
    d["steps"] = stats.steps.to_list()
    (tmp / "stats.json").write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _check(doc: Document, steps, on_error: str, stats: SourceStats) -> tuple[str | None, str]:
    """(drop reason, detail) of a document before dedup, or (None, "")."""
    if doc.error:
        if on_error == "stop":
            raise stop_error(doc)
        if len(stats.skipped) < MAX_SKIPPED_LISTED:  # all of them are in exclusions.jsonl
            stats.skipped.append({"file": doc.file, "line": doc.line, "reason": doc.error, "detail": doc.detail})
        return doc.error, doc.detail
    if doc.drop:  # read fine but not wanted (no abstract, no PMC id): always excluded
        return doc.drop, doc.detail
    doc.text = stats.steps.call("normalize", normalize, doc.text)
    reason = apply_filters(doc, steps, stats.steps)
    return (None, "") if reason is None else (str(reason), detail_of(reason))


def _record(doc: Document, corpus_steps: list, steps: StepStats) -> dict:
    """A kept document's line in docs.jsonl: where it is from, and the key of each corpus step
    (exact digest, MinHash band keys, benchmark items it shares an n-gram with)."""
    rec = {"id": doc.id, "file": doc.file, "line": doc.line, "chars": len(doc.text), "preview": doc.text[:100]}
    for step in corpus_steps:
        rec[step.field] = steps.call(f"{step.name}_key", step.key, doc.text)
    return rec


# --- phase 2 ------------------------------------------------------------------------------

def find_repeats(steps: list, parts: list[Path], folder: Path, progress) -> dict[str, int]:
    """Before the merge: give each dedup step (one with `values` and `restrict`) the keys that
    occur twice or more over all parts, found on disk (`pmcllama.data.repeats`), so its
    memory holds those rather than one entry per document. {step name: repeated keys}."""
    dedups = [s for s in steps if hasattr(s, "restrict")]
    if not dedups:
        return {}
    finders = [RepeatFinder(folder / s.name) for s in dedups]
    for part in parts:
        with open(part / "docs.jsonl", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                progress.update(1)
                for step, finder in zip(dedups, finders):
                    finder.add(step.values(rec[step.field]))
    found = {}
    for step, finder in zip(dedups, finders):  # each finder removes its own files and folder
        repeated = finder.repeated()
        step.restrict(repeated)
        found[step.name] = int(repeated.size)
    with contextlib.suppress(OSError):
        folder.rmdir()
    return found


class Merger:
    """Cross-source dedup, decontamination and the final shards, one part after another."""

    def __init__(self, tmp: Path, dtype: str, steps: list, excl: IO[str], contam: IO[str] | None,
                 repeated: dict[str, int] | None = None) -> None:
        self.tmp, self.dtype, self.steps, self.excl, self.contam = tmp, dtype, steps, excl, contam
        self.repeated = repeated or {}  # {dedup step: keys that occur twice or more} (`find_repeats`)
        self.decontam = next((s for s in steps if isinstance(s, Decontaminate)), None)

    def source(self, name: str, parts: list[Path], progress) -> SourceStats:
        stats = SourceStats()
        with ShardWriter(self.tmp / name, self.dtype) as writer:
            for part in parts:
                stats.add_part(json.loads((part / "stats.json").read_text(encoding="utf-8")))
                with open(part / "exclusions.jsonl", encoding="utf-8") as fh:
                    shutil.copyfileobj(fh, self.excl)
                self._part(name, part, writer, stats, progress)
        if stats.kept == 0:
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(stats.dropped_by_reason.items())) or "no documents read"
            raise UserError(f"source '{name}' has no documents left after cleaning ({dropped})")
        return stats

    def _part(self, name: str, part: Path, writer: ShardWriter, stats: SourceStats, progress) -> None:
        shards = TokenShards(part, self.dtype)
        batch: list[np.ndarray] = []
        with open(part / "docs.jsonl", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                rec = json.loads(line)
                progress.update(1)
                if self._drop(name, rec, stats):
                    continue
                doc = shards.doc(i)
                batch.append(doc)
                stats.kept += 1
                stats.tokens += int(doc.size)
                stats.chars += rec["chars"]
                stats.steps.verdict("write_shards", None)
                stats.steps["write_shards"]["tokens"].update(int(doc.size))
                if len(batch) >= COPY_BATCH:
                    writer.add(batch)
                    batch = []
        writer.add(batch)

    def _drop(self, name: str, rec: dict, stats: SourceStats) -> bool:
        doc = Document("", name, rec["id"], rec["file"], rec["line"])
        doc.text = rec["preview"]
        steps, reason = stats.steps, None
        for step in self.steps:
            key = rec[step.field]
            reason = steps.call(step.name, step.check, key, rec["id"])
            steps.verdict(step.name, reason)
            if step is self.decontam and key:
                self._list_contaminated(doc, key, stats)
            if reason is not None:
                break
        if reason:
            stats.dropped_by_reason[str(reason)] += 1
            self.excl.write(exclusion(doc, str(reason), detail_of(reason)))
        return reason is not None

    def _list_contaminated(self, doc: Document, found: list, stats: SourceStats) -> None:
        """decontamination.jsonl: one row per benchmark item the document shares an n-gram with."""
        action = self.decontam.action
        stats.events["contaminated"] += 1
        for bench, item in found:
            rec = {"source": doc.source, "id": doc.id, "file": doc.file, "line": doc.line,
                   "benchmark": bench, "item": item, "action": action}
            if action == "mark":
                rec["shard_doc"] = stats.kept  # its position in the source's index.npy
            self.contam.write(json.dumps(rec, ensure_ascii=False) + "\n")
