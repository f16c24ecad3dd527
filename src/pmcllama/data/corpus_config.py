"""The corpus stage's configuration (`pmcllama.corpus` runs it): the sources, their cleaning and
quality filters, dedup, decontamination and the executor. It sits below the stage so that the
modules doing the stage's work (`pmcllama.data.executor`, `pmcllama.data.corpus_parts`) take
it as a typed argument without importing the stage.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pmcllama.config import Config, require_unique_names

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class QualityConfig(Config):
    """Cleaning and quality filters (each drop is counted by reason and written to exclusions.jsonl)."""

    boilerplate: bool = Field(
        True, description="remove copyright/licence lines and reference-list runs (a cleaning step)")
    citation_run: int = Field(
        3, ge=1, description="boilerplate: remove runs of at least this many consecutive citation lines")
    inline_citations: bool = Field(
        True, description="boilerplate: remove '(Smith et al., 2003; ...)' citation groups in prose")
    language: Literal["en"] | None = Field(
        None, description="keep only documents in this language (stopword-ratio check); null: off")
    min_stopword_ratio: float = Field(
        0.1, ge=0, le=1, description="language: least share of English function words (prose: 0.3-0.5)")
    language_min_words: int = Field(30, ge=1, description="language: documents with fewer words are not judged")
    max_repeated_lines: float | None = Field(
        0.3, ge=0, le=1, description="drop when more than this share of lines repeat an earlier line; null: off")
    max_symbol_ratio: float | None = Field(
        0.25, ge=0, le=1, description="drop when more than this share of non-space characters are symbols; null: off")


class NearDedupConfig(Config):
    """Near-duplicate removal with MinHash LSH, across all sources (the first copy is kept)."""

    threshold: float = Field(
        0.8, gt=0, lt=1, description="Jaccard similarity of word n-gram sets above which documents are duplicates")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations (signature length)")
    ngram: int = Field(5, ge=1, description="words per shingle")
    seed: int = Field(0, description="seed of the MinHash permutations")


class CorpusSource(Config):
    """One named part of the corpus (books, papers, an ontology, ...), mixed by weight."""

    name: str = Field(description="source name, also its folder in the output ([A-Za-z0-9_-]+, unique)")
    paths: list[str] = Field(
        min_length=1, description="files or folders (walked, sorted); `hpo` = built-in Human Phenotype Ontology")
    format: Literal["auto", "text", "jsonl", "obo", "jats", "medline", "s2orc", "textbook", "parquet"] = Field(
        "auto", description="file format; auto: .txt/.md text, .jsonl/.json(.gz) jsonl, .obo obo, .nxml/.tar.gz jats, "
                            ".xml.gz medline, .xml by its root element, .pdf textbook, .parquet parquet "
                            "(s2orc must be named; its 2020 metadata_N / pdf_parses_N shards are joined on paper_id; "
                            "textbook: .txt/.md/.pdf books cleaned of page headers, page numbers, hyphenation, "
                            "references and index)")
    text_field: str = Field("text", description="jsonl / parquet: the field holding the document text")
    split_paragraphs: bool = Field(
        False, description="text: one document per blank-line-separated paragraph, not per file")
    weight: float = Field(1.0, gt=0, description="mixing weight of this source in pretraining (> 0)")
    obo_root: str | None = Field(None, description="obo: take only descendants of this term id (e.g. HP:0001626)")
    limit: int | None = Field(None, ge=1, description="obo: at most this many terms")
    seed: int = Field(0, description="obo: seed of the term shuffle before `limit`")
    keep_captions: bool = Field(False, description="jats: keep figure and table captions (label and caption text)")
    require_pmcid: bool = Field(
        True, description="s2orc: keep only papers with a PubMed Central id (others dropped as no_pmcid)")
    max_documents: int | None = Field(None, ge=1, description="read at most this many documents from this source")
    min_chars: int | None = Field(
        None, ge=0, description="this source's minimum length (null: the corpus-wide min_chars)")
    quality: QualityConfig | None = Field(
        None, description="this source's quality filters (null: the corpus-wide ones)")

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
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="quality filters of every source without its own")
    dedup: bool = Field(True, description="drop exact duplicates (normalised text) across all sources")
    near_dedup: NearDedupConfig | None = Field(
        default_factory=NearDedupConfig, description="drop near-duplicates across sources (MinHash LSH); null: off")
    decontaminate: list[str] = Field(
        default_factory=list, description="benchmark files (path or format:path, as the instructions stage); "
                                          "documents sharing an n-gram with an item are dropped or marked")
    decontam_ngram: int = Field(13, ge=4, description="n-gram length in words of decontamination (13 as GPT-3)")
    decontam_action: Literal["drop", "mark"] = Field(
        "drop", description="contaminated documents: drop them (reason `contaminated`) or keep them and list them")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="unreadable input: stop with an error, or skip it (written to exclusions.jsonl)")
    executor: Literal["local", "slurm", "ray"] = Field(
        "local", description="datatrove executor running the per-file work (the merge runs here afterwards)")
    workers: int = Field(1, ge=1, description="local / ray: files processed in parallel (processes)")
    slurm: dict[str, Any] = Field(
        default_factory=dict, description="slurm: options of datatrove's SlurmPipelineExecutor (partition "
                                          "required; time, cpus_per_task, mem_per_cpu_gb, venv_path, sbatch_args, ...)")

    @model_validator(mode="after")
    def _unique_names(self) -> "CorpusConfig":
        require_unique_names(self.sources, "source")
        return self
