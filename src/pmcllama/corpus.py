"""STAGE 1  corpus: raw text -> cleaned documents -> token shards (the knowledge corpus).

    read (text / jsonl / obo / jats / medline / s2orc) -> normalise -> filter (too short, exact duplicate)
    -> tokenize (fast tokenizer, EOS after every document) -> shards per source

Output folder (`out`):

    <source>/tokens.bin, <source>/index.npy   token shards (see `pmcllama.data.shards`)
    exclusions.jsonl                          every dropped document or unreadable record
    stats.json                                per source: files, documents in, kept, dropped by reason, tokens, chars
    manifest.json, config.yaml                the stage contract (see `pmcllama.stage`)

Every input document is accounted for as kept or dropped. The pretrain stage opens the
output with `pmcllama.data.shards.read_corpus(out)`; the manifest carries `tokenizer`,
`vocab_size`, `eos_token_id`, `dtype` and `sources` ({name: weight, documents, tokens, path}).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from pmcllama.config import Config, require_unique_names
from pmcllama.data.filters import ExactDedup, Filter, apply_filters, normalize, too_short
from pmcllama.data.readers import Document, InputFile, read_file, resolve_paths
from pmcllama.data.shards import ShardWriter, dtype_for
from pmcllama.errors import UserError
from pmcllama.stage import StageResult, run_stage, write_json

BATCH = 256
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class CorpusSource(Config):
    """One named part of the corpus (books, papers, an ontology, ...), mixed by weight."""

    name: str = Field(description="source name, also its folder in the output ([A-Za-z0-9_-]+, unique)")
    paths: list[str] = Field(min_length=1, description="files or folders (walked, sorted); `hpo` = built-in Human Phenotype Ontology")
    format: Literal["auto", "text", "jsonl", "obo", "jats", "medline", "s2orc"] = Field(
        "auto", description="file format; auto: .txt/.md text, .jsonl/.json jsonl, .obo obo, .nxml/.tar.gz jats, "
                            ".xml.gz medline, .xml by its root element (s2orc must be named)")
    text_field: str = Field("text", description="jsonl: the field holding the document text")
    split_paragraphs: bool = Field(False, description="text: one document per blank-line-separated paragraph, not per file")
    weight: float = Field(1.0, gt=0, description="mixing weight of this source in pretraining (> 0)")
    obo_root: str | None = Field(None, description="obo: take only descendants of this term id (e.g. HP:0001626)")
    limit: int | None = Field(None, ge=1, description="obo: at most this many terms")
    seed: int = Field(0, description="obo: seed of the term shuffle before `limit`")
    keep_captions: bool = Field(False, description="jats: keep figure and table captions (label and caption text)")
    require_pmcid: bool = Field(True, description="s2orc: keep only papers with a PubMed Central id (others dropped as no_pmcid)")
    max_documents: int | None = Field(None, ge=1, description="read at most this many documents from this source")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("a source name may hold only letters, digits, '_' and '-'")
        return v


class CorpusConfig(Config):
    """STAGE 1: build token shards from text, JSONL and ontology sources."""

    out: str = Field("runs/corpus", description="output folder")
    tokenizer: str = Field("smollm2-135m", description="model whose tokenizer is used (folder, .gguf or built-in name)")
    sources: list[CorpusSource] = Field(min_length=1, description="the corpus sources, at least one")
    min_chars: int = Field(50, ge=0, description="drop documents shorter than this many characters after cleaning")
    dedup: bool = Field(True, description="drop exact duplicates (normalised text) across all sources")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="unreadable input: stop with an error, or skip it (written to exclusions.jsonl)")

    @model_validator(mode="after")
    def _unique_names(self) -> "CorpusConfig":
        require_unique_names(self.sources, "source")
        return self


@dataclass
class SourceStats:
    files: int = 0
    documents_in: int = 0
    kept: int = 0
    dropped_by_reason: Counter = field(default_factory=Counter)
    tokens: int = 0
    chars: int = 0
    events: Counter = field(default_factory=Counter)  # not documents: deleted citations, skipped tar members

    def as_dict(self) -> dict:
        return {"files": self.files, "documents_in": self.documents_in, "kept": self.kept,
                "dropped": sum(self.dropped_by_reason.values()),
                "dropped_by_reason": dict(sorted(self.dropped_by_reason.items())),
                "tokens": self.tokens, "chars": self.chars, "events": dict(sorted(self.events.items()))}


def resolve_inputs(cfg: CorpusConfig) -> dict[str, list[InputFile]]:
    """Every source's input files; a missing one is an error unless on_error=skip."""
    resolved = {}
    for src in cfg.sources:
        files = resolve_paths(src.paths, src.format)
        for f in files:
            if f.missing and cfg.on_error == "stop":
                raise UserError(f"source '{src.name}': {f.problem}", f.path)
        resolved[src.name] = files
    return resolved


def _documents(src: CorpusSource, files: list[InputFile], stats: SourceStats) -> Iterator[Document]:
    """The source's documents, file by file, at most `max_documents` of them."""
    n = 0
    for inp in files:
        stats.files += 0 if inp.missing else 1
        for doc in read_file(inp, src.name, src.text_field, src.split_paragraphs, src.obo_root, src.limit,
                             src.seed, src.keep_captions, src.require_pmcid, stats.events):
            if src.max_documents is not None and n >= src.max_documents:
                return
            n += 1
            yield doc


class _Exclusions:
    """Writes dropped documents to exclusions.jsonl and counts them by reason."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def add(self, doc: Document, reason: str, stats: SourceStats, detail: str = "") -> None:
        stats.dropped_by_reason[reason] += 1
        rec = {"source": doc.source, "id": doc.id, "file": doc.file, "line": doc.line, "reason": reason}
        if detail:
            rec["detail"] = detail
        elif doc.text:
            rec["preview"] = doc.text[:100]
        self.fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _flush(batch: list[str], tok, writer: ShardWriter, stats: SourceStats) -> None:
    if not batch:
        return
    ids = tok(batch, add_special_tokens=False, verbose=False)["input_ids"]
    eos = tok.eos_token_id
    docs = [list(x) + [eos] for x in ids]
    writer.add(docs)
    stats.tokens += sum(len(d) for d in docs)
    batch.clear()


def build_source(src: CorpusSource, files: list[InputFile], folder: Path, tok, dtype: str,
                 filters: list[Filter], excl: _Exclusions, on_error: str, progress) -> SourceStats:
    """Read, clean, filter and tokenize one source into `folder`."""
    stats = SourceStats()
    batch: list[str] = []
    with ShardWriter(folder, dtype) as writer:
        for doc in _documents(src, files, stats):
            stats.documents_in += 1
            progress.update(1)
            if doc.error:
                if on_error == "stop":
                    raise UserError(f"source '{src.name}': {doc.detail}", doc.file, doc.line)
                excl.add(doc, doc.error, stats, doc.detail)
                continue
            if doc.drop:  # read fine but not wanted (no abstract, no PMC id): always excluded
                excl.add(doc, doc.drop, stats, doc.detail)
                continue
            doc.text = normalize(doc.text)
            reason = apply_filters(doc, filters)
            if reason:
                excl.add(doc, reason, stats)
                continue
            stats.kept += 1
            stats.chars += len(doc.text)
            batch.append(doc.text)
            if len(batch) >= BATCH:
                _flush(batch, tok, writer, stats)
        _flush(batch, tok, writer, stats)
    if stats.kept == 0:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(stats.dropped_by_reason.items())) or "no documents read"
        raise UserError(f"source '{src.name}' has no documents left after cleaning ({dropped})")
    return stats


def _summary(stats: dict[str, SourceStats], log: Callable[[str], None]) -> None:
    for name, st in stats.items():
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(st.dropped_by_reason.items())) or "none"
        events = "".join(f"; {k} {v:,}" for k, v in sorted(st.events.items()) if v)
        log(f"[corpus] {name}: kept {st.kept:,} of {st.documents_in:,} documents "
            f"({st.tokens:,} tokens); dropped: {dropped}{events}")


def build(cfg: CorpusConfig, inputs: dict[str, list[InputFile]], tmp: Path,
          log: Callable[[str], None] = print) -> StageResult:
    """The stage's work: every source into `tmp`, plus exclusions.jsonl and stats.json."""
    from pmcllama.models import load_tokenizer
    from pmcllama.progress import progress as progress_bar

    tok = load_tokenizer(cfg.tokenizer)
    if tok.eos_token_id is None:
        raise UserError(f"tokenizer of '{cfg.tokenizer}' has no EOS token")
    dtype = dtype_for(len(tok))
    filters: list[Filter] = [too_short(cfg.min_chars)]
    if cfg.dedup:
        filters.append(ExactDedup())
    stats: dict[str, SourceStats] = {}
    with open(tmp / "exclusions.jsonl", "w", encoding="utf-8") as fh, \
            progress_bar(desc="corpus", unit=" docs") as progress:
        excl = _Exclusions(fh)
        for src in cfg.sources:
            progress.set_postfix_str(src.name, refresh=False)
            stats[src.name] = build_source(src, inputs[src.name], tmp / src.name, tok, dtype,
                                           filters, excl, cfg.on_error, progress)
    totals = {
        "documents_in": sum(s.documents_in for s in stats.values()),
        "documents_kept": sum(s.kept for s in stats.values()),
        "documents_dropped": sum(sum(s.dropped_by_reason.values()) for s in stats.values()),
        "tokens": sum(s.tokens for s in stats.values()),
    }
    write_json(tmp / "stats.json", {"sources": {n: s.as_dict() for n, s in stats.items()}, "total": totals})
    _summary(stats, log)
    info = {
        "tokenizer": cfg.tokenizer, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "dtype": dtype,
        "sources": {src.name: {"weight": src.weight, "documents": stats[src.name].kept,
                               "tokens": stats[src.name].tokens, "path": src.name} for src in cfg.sources},
    }
    return StageResult(counts=totals, info=info)


def run(cfg: CorpusConfig, force: bool = False) -> Path:
    """Build the corpus into `cfg.out` unless it is already current; returns the folder."""
    inputs = resolve_inputs(cfg)
    paths = sorted({str(f.path) for files in inputs.values() for f in files if not f.missing})
    return run_stage("corpus", cfg, cfg.out, inputs=paths, work=lambda tmp: build(cfg, inputs, tmp), force=force)
