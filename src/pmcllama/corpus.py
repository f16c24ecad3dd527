"""STAGE 1  corpus: raw text -> cleaned documents -> token shards (the knowledge corpus).

    per file, in parallel (datatrove executor: local / slurm / ray), resumable:
      read (text / jsonl / obo / jats / medline / s2orc / textbook / parquet) -> normalise
      -> boilerplate removal -> too short / language / repeated lines / symbol ratio
      -> exact digest, MinHash keys, benchmark 13-gram matches -> tokenize (EOS after each)
    then once, streaming: the dedup keys that occur twice or more (counted on disk), then
      exact + near-duplicate removal across sources, decontamination (drop or mark) -> shards
      per source

Output folder (`out`):

    <source>/tokens.bin, <source>/index.npy   token shards (see `pmcllama.data.shards`)
    exclusions.jsonl                          every dropped document or unreadable record: reason and detail
    decontamination.jsonl                     (with `decontaminate`) each document x benchmark item found
    stats.json                                per source: files, documents in, kept, dropped by reason, tokens
    corpus_report.json, summary.md            the above plus throughput, token length histogram, skipped inputs;
                                              corpus_report.json also datatrove's Stats of every step, per source
                                              (`steps`: time, total / forwarded / dropped_<reason>, tokens),
                                              and `dedup_index`: per dedup step, the keys that occur twice or
                                              more and the documents it held in memory
    token_lengths.png                         documents per token length, per source
    manifest.json, config.yaml                the stage contract (see `pmcllama.stage`)

Every input document is accounted for as kept or dropped. The files a folder walk meets but
does not read (another format, licence/readme files; see `pmcllama.data.readers`) are
listed as `skipped_inputs` ({source, path, reason, detail}, the first 1,000, with
`skipped_inputs_count`) at the top of corpus_report.json, in summary.md and in the
manifest, and counted in one printed line; per source, `skipped_inputs` lists the
unreadable records skipped under `on_error: skip` (also in exclusions.jsonl). A killed run keeps `<out>.partial/`
with its finished parts and resumes from there. The pretrain stage opens the output with
`pmcllama.data.shards.read_corpus(out)`; the manifest carries `tokenizer`, `vocab_size`,
`eos_token_id`, `dtype` and `sources` ({name: weight, documents, tokens, path}).
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

from pmcllama.data.corpus_config import CorpusConfig, CorpusSource
from pmcllama.data.corpus_parts import (MAX_SKIPPED_LISTED, Merger, Pipeline, SourceStats, cached, find_repeats,
                                        tokenizer)
from pmcllama.data.corpus_report import summary_lines, throughput, token_histogram
from pmcllama.data.decontam import Decontaminate, build_index, parse_spec
from pmcllama.data.dedup import NearDedup
from pmcllama.data.executor import make_jobs, prepare_parts, run_jobs, work_fingerprint
from pmcllama.data.filters import ExactDedup, quality_steps
from pmcllama.data.document import InputFile
from pmcllama.data.readers import resolve_paths
from pmcllama.data.shards import TokenShards, dtype_for
from pmcllama.errors import UserError
from pmcllama.stage import StageResult, check_output, output_folder, prepare_partial, run_stage, write_json

def resolve_inputs(cfg: CorpusConfig, skipped: list | None = None) -> dict[str, list[InputFile]]:
    """Every source's input files; a missing one is an error unless on_error=skip. The files
    of the folders that are not read are appended to `skipped` ({source, path, reason, detail})."""
    resolved = {}
    for src in cfg.sources:
        walked: list[dict] = []
        files = resolve_paths(src.paths, src.format, walked)
        for f in files:
            if f.missing and cfg.on_error == "stop":
                raise UserError(f"source '{src.name}': {f.problem}", f.path)
        resolved[src.name] = files
        if skipped is not None:
            skipped.extend({"source": src.name, **w} for w in walked)
    return resolved


def skipped_line(skipped: list[dict]) -> str:
    """The one printed line about the files of the input folders that were not read."""
    reasons = Counter(s["reason"] for s in skipped)
    why = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items()))
    return (f"[corpus] skipped {len(skipped):,} file(s) in the input folders that are not read ({why}); "
            f"listed under skipped_inputs in corpus_report.json")


# --- the pipeline ------------------------------------------------------------------------

def document_steps(cfg: CorpusConfig, src: CorpusSource):
    """Per document, in the parallel work (after reading and normalising): boilerplate removal,
    too short, language, repeated lines, symbol ratio; and the boilerplate step, for its counts."""
    q = src.quality or cfg.quality
    return quality_steps(cfg.min_chars if src.min_chars is None else src.min_chars, **q.model_dump())


def corpus_steps(cfg: CorpusConfig) -> list:
    """Across all sources, in corpus order (keys computed in the parallel work, checked in the
    merge): exact dedup, near dedup, decontamination; then the kept documents' tokens are copied
    into the shards."""
    steps: list = [ExactDedup()] if cfg.dedup else []
    if cfg.near_dedup is not None:
        steps.append(NearDedup(**cfg.near_dedup.model_dump()))
    if cfg.decontaminate:
        index = cached(("bench", cfg.decontam_ngram, *cfg.decontaminate),
                       lambda: build_index(cfg.decontaminate, cfg.decontam_ngram))
        steps.append(Decontaminate(index, cfg.decontam_action))
    return steps


PIPELINE = Pipeline(document=document_steps, corpus=corpus_steps)


def _summary(stats: dict[str, SourceStats], log: Callable[[str], None]) -> None:
    for name, st in stats.items():
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(st.dropped_by_reason.items())) or "none"
        events = "".join(f"; {k} {v:,}" for k, v in sorted(st.events.items()) if v)
        log(f"[corpus] {name}: kept {st.kept:,} of {st.documents_in:,} documents "
            f"({st.tokens:,} tokens); dropped: {dropped}{events}")


def _merge(cfg: CorpusConfig, jobs: list, parts: Path, tmp: Path, dtype: str) -> tuple[dict, Merger]:
    from pmcllama.progress import progress as progress_bar

    steps = PIPELINE.corpus(cfg)
    by_source = {src.name: [parts / j.key for j in jobs if j.source == src.name] for src in cfg.sources}
    with progress_bar(desc="corpus dedup keys", unit=" docs") as progress:
        repeated = find_repeats(steps, [p for ps in by_source.values() for p in ps], tmp / "repeats", progress)
    with open(tmp / "exclusions.jsonl", "w", encoding="utf-8") as fh, \
            open(tmp / "decontamination.jsonl", "w", encoding="utf-8") as dfh, \
            progress_bar(desc="corpus merge", unit=" docs") as progress:
        merger = Merger(tmp, dtype, steps, fh, dfh, repeated)
        stats = {name: merger.source(name, ps, progress) for name, ps in by_source.items()}
    if not cfg.decontaminate:
        (tmp / "decontamination.jsonl").unlink()
    return stats, merger


def build(cfg: CorpusConfig, inputs: dict[str, list[InputFile]], tmp: Path,
          log: Callable[[str], None] = print, skipped: list[dict] | None = None) -> StageResult | None:
    """The stage's work into `tmp` (None when it was submitted to Slurm, see `executor`);
    `skipped`: the files of the input folders that were not read, for the report."""
    t0 = time.perf_counter()
    tok = tokenizer(cfg.tokenizer)
    if tok.eos_token_id is None:
        raise UserError(f"tokenizer of '{cfg.tokenizer}' has no EOS token")
    dtype = dtype_for(len(tok))
    jobs = make_jobs(cfg, inputs)
    parts = tmp / "parts"
    done = prepare_parts(parts, work_fingerprint(cfg, jobs), log)
    if done:
        log(f"[corpus] resuming: {done} of {len(jobs)} parts already done")
    if not run_jobs(cfg, jobs, parts, dtype, PIPELINE, finish=partial(run, cfg.model_copy(update={"executor": "local"}))):
        return None
    t1 = time.perf_counter()
    stats, merger = _merge(cfg, jobs, parts, tmp, dtype)
    shutil.rmtree(parts)
    report = _report(cfg, stats, merger, tmp, dtype, skipped or [])
    wall = {"work_s": t1 - t0, "merge_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0}
    totals = report["total"]
    report["throughput"] = throughput(stats, wall, totals["tokens"], sum(s.chars for s in stats.values()))
    report["executor"] = {"executor": cfg.executor, "workers": cfg.workers, "parts": len(jobs), "resumed_parts": done}
    write_json(tmp / "corpus_report.json", report)
    (tmp / "summary.md").write_text("\n".join(summary_lines(report)) + "\n", encoding="utf-8")
    _summary(stats, log)
    info = {
        "tokenizer": cfg.tokenizer, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "dtype": dtype,
        "sources": {src.name: {"weight": src.weight, "documents": stats[src.name].kept,
                               "tokens": stats[src.name].tokens, "path": src.name} for src in cfg.sources},
        "skipped_inputs": report["skipped_inputs"], "skipped_inputs_count": report["skipped_inputs_count"],
    }
    return StageResult(counts=totals, info=info)


def _report(cfg: CorpusConfig, stats: dict[str, SourceStats], merger: Merger, tmp: Path, dtype: str,
            skipped: list[dict]) -> dict:
    """stats.json (written here) and the report's counts, token lengths and skipped inputs."""
    totals = {
        "documents_in": sum(s.documents_in for s in stats.values()),
        "documents_kept": sum(s.kept for s in stats.values()),
        "documents_dropped": sum(sum(s.dropped_by_reason.values()) for s in stats.values()),
        "tokens": sum(s.tokens for s in stats.values()),
    }
    report = {"sources": {n: s.as_dict() for n, s in stats.items()}, "total": totals}
    if cfg.decontaminate:
        totals["documents_contaminated"] = merger.decontam.documents
        report["decontamination"] = merger.decontam.report()
    write_json(tmp / "stats.json", report)
    report["steps"] = {n: s.steps.to_list() for n, s in stats.items()}  # datatrove's Stats per step
    report["dedup_index"] = {step.name: {"repeated_keys": merger.repeated[step.name], "indexed_documents": step.indexed}
                             for step in merger.steps if step.name in merger.repeated}
    shards = {n: TokenShards(tmp / n, dtype) for n in stats}
    report["token_lengths"] = token_histogram(shards, tmp / "token_lengths.png")
    report["skipped_inputs"] = skipped[:MAX_SKIPPED_LISTED]
    report["skipped_inputs_count"] = len(skipped)
    return report


def run(cfg: CorpusConfig, force: bool = False) -> Path:
    """Build the corpus into `cfg.out` unless it is already current; returns the folder."""
    skipped: list[dict] = []
    inputs = resolve_inputs(cfg, skipped)
    if skipped:
        print(skipped_line(skipped))
    paths = sorted({str(p) for files in inputs.values() for f in files if not f.missing for p in f.paths()})
    for spec in cfg.decontaminate:
        path = parse_spec(spec)[1]
        if not path.is_file():
            raise UserError("decontaminate: benchmark file not found", path)
        paths.append(str(path))
    if cfg.executor == "slurm":
        return submit(cfg, inputs, paths, force)
    return run_stage("corpus", cfg, cfg.out, inputs=paths, work=lambda tmp: build(cfg, inputs, tmp, skipped=skipped),
                     force=force, resumable=True)


def submit(cfg: CorpusConfig, inputs: dict[str, list[InputFile]], paths: list[str], force: bool) -> Path:
    """executor=slurm: submit the per-file work and the merge; the merge job publishes `out`."""
    out = output_folder(cfg.out)
    check_output(out, cfg.out, force)
    tmp = prepare_partial(out, cfg.out, fresh=force)
    if build(cfg, inputs, tmp) is not None:  # nothing left to submit: finish here
        return run(cfg.model_copy(update={"executor": "local"}), force=False)
    print(f"[corpus] submitted to Slurm; the merge job will write {cfg.out}")
    return out
