"""STAGE 3a  Build the instruction set: chat records, train/validation split, knowledge probe.

Sources, each named:
- `alpaca`: .json arrays or .jsonl files of {instruction, input, output} (ChatDoctor,
  PMC-LLaMA's MedC-I release, ...) -> one user turn (instruction + input) and one answer,
- `medqa`, `medmcqa`, `pubmedqa`, `mmlu`: benchmark training files in their official formats
  -> question (+ options) and the answer in `answer_format` (paper: "###Answer: OPTION C IS
  CORRECT." after "###Rationale: ..." when the data has one; letter; letter_rationale),
  see `pmcllama.data.qa`,
- `mtsdialog` (MTS-Dialog CSV), `sharegpt`, `messages` (OpenAI chat JSONL), `qa_jsonl`
  (consumer QA such as MedQuAD, MedicationQA), see `pmcllama.data.dialogue`,
- `kg`: an ontology (built-in `hpo` or an .obo file) -> knowledge-graph prompts
  (description, relation, two kinds of multiple choice); the first `probe_terms` selected
  terms are held out and become the knowledge probe (MedQA-USMLE JSONL layout) instead.

With `decontaminate: [benchmark files]`, records whose user or assistant text shares a
`decontam_ngram`-word n-gram with a benchmark item are dropped (counted as `decontaminated`,
listed in decontamination.jsonl), see `pmcllama.data.decontam`.

Output folder: train.jsonl, val.jsonl ({id, source, task, messages}), probe.jsonl (when asked
for), alpaca.json (the train split in the Alpaca layout), stats.json, rejected.jsonl (records
skipped under `on_error: skip`), decontamination.jsonl (with `decontaminate`), manifest.json.
Identical (prompt, answer) pairs are kept once.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pmcllama import stage
from pmcllama.config import Config, require_unique_names
from pmcllama.data import dialogue, qa
from pmcllama.data.dialogue import alpaca_items as _alpaca_items, check_alpaca as _check_alpaca
from pmcllama.data.qa import QA_FORMATS
from pmcllama.errors import UserError
from pmcllama.knowledge.prompts import TASKS, kg_prompts, probe_rows, write_probe

DEFAULT_SYSTEM_PROMPT = (
    "You are a knowledgeable and careful medical assistant. Answer accurately and concisely."
)
KGTask = Literal["description", "relation", "mcq_definition", "mcq_parent"]
KG_ONLY = ("root", "limit", "seed_terms", "tasks", "probe_terms", "ontology")
CHAT_FORMATS = ("mtsdialog", "sharegpt", "messages", "qa_jsonl")
FILE_FORMATS = ("alpaca", *QA_FORMATS, *CHAT_FORMATS)
ONLY_FOR = {"max_records": FILE_FORMATS, "task": ("alpaca",), "answer_format": QA_FORMATS,
            "question_field": ("qa_jsonl",), "answer_field": ("qa_jsonl",)}


class InstructionSource(Config):
    name: str = Field(description="source name, used in record ids and statistics")
    format: Literal["alpaca", "medqa", "medmcqa", "pubmedqa", "mmlu", "mtsdialog", "sharegpt",
                    "messages", "qa_jsonl", "kg"] = Field(
        description="input format of `paths` (see above); kg: prompts from an ontology, no paths")
    paths: list[str] = Field(default_factory=list, description="input files (every format but kg)")
    max_records: int | None = Field(None, ge=1, description="keep at most this many records (None = all; not kg)")
    task: Literal["auto", "dialogue", "qa"] = Field(
        "auto", description="alpaca: task label; auto = dialogue when a record has an input, else qa")
    answer_format: Literal["paper", "letter", "letter_rationale"] = Field(
        "paper", description="medqa/medmcqa/pubmedqa/mmlu answers: the paper's '###Answer: OPTION C IS CORRECT.', "
        "'C. text', or rationale + 'The answer is C. text'")
    question_field: str | None = Field(None, description="qa_jsonl: question field (None = question or Question)")
    answer_field: str | None = Field(None, description="qa_jsonl: answer field (None = answer or Answer)")
    ontology: str = Field("hpo", description="kg: built-in ontology name (hpo) or an .obo file")
    root: str | None = Field(None, description="kg: only terms below this term id (None = all terms)")
    limit: int | None = Field(None, ge=1, description="kg: at most this many terms (same as the corpus stage)")
    seed_terms: int = Field(0, description="kg: seed of the term selection (same as the corpus stage)")
    tasks: list[KGTask] = Field(default_factory=lambda: list(TASKS), min_length=1,
                                description="kg: prompt kinds to build")
    probe_terms: int = Field(0, ge=0, description="kg: the first N selected terms form the knowledge probe, not training")

    @model_validator(mode="after")
    def _check_format(self) -> "InstructionSource":
        if self.format != "kg":
            if not self.paths:
                raise ValueError(f"{self.format} source '{self.name}' needs paths: [file, ...]")
            given = sorted(set(KG_ONLY) & self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)} only apply to format: kg (source '{self.name}')")
        elif self.paths:
            raise ValueError(f"kg source '{self.name}' reads `ontology`, not `paths`")
        wrong = [k for k, fmts in ONLY_FOR.items() if k in self.model_fields_set and self.format not in fmts]
        if wrong:
            hint = "; use limit for kg" if self.format == "kg" and "max_records" in wrong else ""
            raise ValueError("; ".join(f"{k} only apply to format: {', '.join(ONLY_FOR[k])}" for k in wrong)
                             + f" (source '{self.name}'{hint})")
        return self


class InstructionsConfig(Config):
    out: str = Field("runs/instructions", description="output folder")
    sources: list[InstructionSource] = Field(min_length=1, description="instruction sources")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of records held out for validation")
    seed: int = Field(0, description="seed of the split, prompt templates, distractors and answer letters")
    system_prompt: str | None = Field(DEFAULT_SYSTEM_PROMPT, description="system turn of every record (None = none)")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="a malformed record: stop with an error, or skip it into rejected.jsonl")
    decontaminate: list[str] = Field(
        default_factory=list,
        description="benchmark files (path or format:path); records sharing an n-gram with an item are dropped")
    decontam_ngram: int = Field(13, ge=4, description="n-gram length in words of decontamination (13 as GPT-3)")

    @model_validator(mode="after")
    def _unique_names(self) -> "InstructionsConfig":
        require_unique_names(self.sources, "source")
        return self


# ----------------------------------------------------------------------------- alpaca


class Rejects:
    """Malformed records: an error (on_error=stop) or a row of rejected.jsonl (skip)."""

    def __init__(self, policy: str):
        self.policy, self.rows, self.counts = policy, [], Counter()

    def add(self, source: str, path: Path, line: int | None, item: int | None, reason: str, raw: Any) -> None:
        if self.policy == "stop":
            where = f"item {item}: " if item is not None else ""
            raise UserError(f"{where}{reason} (on_error=skip sets such records aside)", path, line)
        self.rows.append({"source": source, "path": str(path), "line": line, "item": item,
                          "reason": reason, "record": raw})
        self.counts[source] += 1


def _messages(system: str | None, user: str, answer: str) -> list[dict]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def read_alpaca(src: InstructionSource, system: str | None, rejects: Rejects) -> list[dict]:
    """Chat records of an alpaca source (at most `max_records`)."""
    records: list[dict] = []
    for name in src.paths:
        path = Path(name)
        for line, item, obj, error in _alpaca_items(path):
            if error is None:
                try:
                    instruction, inp, output = _check_alpaca(obj)
                except ValueError as e:
                    error = str(e)
            if error is not None:
                rejects.add(src.name, path, line, item, error, obj)
                continue
            user = instruction + ("\n\n" + inp if inp and instruction else inp)
            task = src.task if src.task != "auto" else ("dialogue" if inp else "qa")
            records.append({"id": f"{src.name}-{len(records)}", "source": src.name, "task": task,
                            "messages": _messages(system, user, output),
                            "_alpaca": {"instruction": instruction, "input": inp, "output": output}})
            if src.max_records and len(records) >= src.max_records:
                return records
    return records


def _rows(src: InstructionSource, path: Path):
    """qa.Row's whose value is a qa.Converted record, for every format but alpaca and kg."""
    if src.format in QA_FORMATS:
        return qa.qa_rows(src.format, path, src.answer_format)
    if src.format == "mtsdialog":
        return dialogue.read_mtsdialog(path)
    if src.format == "qa_jsonl":
        return dialogue.read_qa_jsonl(path, src.question_field, src.answer_field)
    return dialogue.read_chat(path, src.format)


def read_converted(src: InstructionSource, system: str | None, rejects: Rejects) -> list[dict]:
    """Chat records of a benchmark-QA, dialogue or consumer-QA source (at most `max_records`)."""
    records: list[dict] = []
    ids: Counter = Counter()
    for name in src.paths:
        path = Path(name)
        for row in _rows(src, path):
            if row.error is not None:
                rejects.add(src.name, path, row.line, row.item, row.error, row.raw)
                continue
            conv = row.value
            key = f"{src.name}-{path.stem}-{conv.id}" if len(src.paths) > 1 else f"{src.name}-{conv.id}"
            ids[key] += 1
            own_system = conv.turns[0]["role"] == "system"
            turns = conv.turns if own_system or not system else [{"role": "system", "content": system}, *conv.turns]
            records.append({"id": key if ids[key] == 1 else f"{key}-{ids[key]}", "source": src.name,
                            "task": conv.task, "messages": turns})
            if src.max_records and len(records) >= src.max_records:
                return records
    return records


# ----------------------------------------------------------------------------- kg


def read_kg(src: InstructionSource, system: str | None, seed: int) -> tuple[list[dict], list[dict], Counter]:
    """(chat records, probe rows, skipped counts) of a kg source."""
    from pmcllama.knowledge.ontology import load_ontology

    onto = load_ontology(src.ontology)
    selected = onto.select(src.root, src.limit, src.seed_terms)
    if not selected:
        raise UserError(f"kg source '{src.name}': no term with a name and definition selected", onto.source)
    held, rest = selected[:src.probe_terms], selected[src.probe_terms:]
    prompts, skipped = kg_prompts(onto, rest, src.tasks, seed, pool=selected, exclude={t.id for t in held})
    records, seen = [], Counter()
    for p in prompts:
        key = f"{src.name}-{p.term_id}-{p.task}"
        seen[key] += 1
        records.append({"id": key if seen[key] == 1 else f"{key}-{seen[key]}", "source": src.name,
                        "task": p.task, "messages": _messages(system, p.user_text(), p.answer)})
    rows, probe_skipped = probe_rows(onto, held, selected, seed) if held else ([], Counter())
    return records, rows, skipped + probe_skipped


# ----------------------------------------------------------------------------- split, stats, files


def _key(record: dict) -> tuple:
    return tuple((m["role"], m["content"]) for m in record["messages"] if m["role"] != "system")


def dedup(records: list[dict]) -> tuple[list[dict], Counter]:
    """Records with a new (prompt, answer); duplicates counted by source."""
    seen: set[tuple] = set()
    kept, dups = [], Counter()
    for r in records:
        k = _key(r)
        if k in seen:
            dups[r["source"]] += 1
        else:
            seen.add(k)
            kept.append(r)
    return kept, dups


def split(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic random split (record order kept within each part)."""
    n = len(records)
    n_val = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_val = min(max(1, n_val), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return ([r for i, r in enumerate(records) if i not in val_idx],
            [r for i, r in enumerate(records) if i in val_idx])


def decontaminate(records: list[dict], cfg: InstructionsConfig, per_source: dict, folder: Path
                  ) -> tuple[list[dict], int, dict]:
    """Drop records whose user or assistant text shares an n-gram with a benchmark item; write
    decontamination.jsonl ({id, source, benchmark, item} per match). (kept, dropped, index stats)"""
    if not cfg.decontaminate:
        return records, 0, {}
    from pmcllama.data.decontam import build_index

    index = build_index(cfg.decontaminate, cfg.decontam_ngram)
    kept, report, dropped = [], [], Counter()
    for r in records:
        hits = index.find(m["content"] for m in r["messages"] if m["role"] != "system")
        if hits:
            dropped[r["source"]] += 1
            report.extend({"id": r["id"], "source": r["source"], "benchmark": b, "item": i} for b, i in hits)
        else:
            kept.append(r)
    for name, s in per_source.items():
        s["decontaminated"] = dropped[name]
    write_jsonl(folder / "decontamination.jsonl", report)
    return kept, sum(dropped.values()), {"ngram": index.n, "benchmarks": index.stats}


def _chars(values: list[int]) -> dict:
    return {"mean": round(sum(values) / len(values), 1) if values else 0, "max": max(values, default=0)}


def split_stats(records: list[dict]) -> dict:
    prompts = [sum(len(m["content"]) for m in r["messages"] if m["role"] == "user") for r in records]
    answers = [sum(len(m["content"]) for m in r["messages"] if m["role"] == "assistant") for r in records]
    return {"records": len(records),
            "sources": dict(Counter(r["source"] for r in records)),
            "tasks": dict(Counter(f"{r['source']}/{r['task']}" for r in records)),
            "prompt_chars": _chars(prompts), "answer_chars": _chars(answers)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, ensure_ascii=False) + "\n")


def to_alpaca(record: dict) -> dict:
    """A record in the Alpaca layout PMC-LLaMA released (system turn dropped)."""
    if "_alpaca" in record:
        return dict(record["_alpaca"])
    users = [m["content"] for m in record["messages"] if m["role"] == "user"]
    answers = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    return {"instruction": "\n\n".join(users), "input": "", "output": "\n\n".join(answers)}


# ----------------------------------------------------------------------------- the stage


def _inputs(cfg: InstructionsConfig) -> list[Path]:
    from pmcllama.knowledge.ontology import ontology_path

    paths: list[Path] = []
    for src in cfg.sources:
        if src.format == "kg":
            paths.append(ontology_path(src.ontology))
            continue
        for name in src.paths:
            if not Path(name).is_file():
                raise UserError(f"source '{src.name}': input file not found", name)
            paths.append(Path(name))
    from pmcllama.data.decontam import parse_spec

    for spec in cfg.decontaminate:
        path = parse_spec(spec)[1]
        if not path.is_file():
            raise UserError("decontaminate: benchmark file not found", path)
        paths.append(path)
    return paths


def collect(cfg: InstructionsConfig) -> tuple[list[dict], list[dict], Rejects, dict]:
    """All records, probe rows, rejects and per-source statistics."""
    rejects = Rejects(cfg.on_error)
    records, probe, per_source = [], [], {}
    for src in cfg.sources:
        skipped, rows = Counter(), []
        if src.format == "alpaca":
            recs = read_alpaca(src, cfg.system_prompt, rejects)
        elif src.format != "kg":
            recs = read_converted(src, cfg.system_prompt, rejects)
        else:
            recs, rows, skipped = read_kg(src, cfg.system_prompt, cfg.seed)
            if not rows and src.probe_terms:
                raise UserError(f"kg source '{src.name}': no probe item could be built from {src.probe_terms} terms")
        if not recs:
            raise UserError(f"source '{src.name}' produced no records"
                            + (f" ({rejects.counts[src.name]} rejected)" if rejects.counts[src.name] else ""))
        per_source[src.name] = {"format": src.format, "records": len(recs),
                                "tasks": dict(Counter(r["task"] for r in recs)),
                                "rejected": rejects.counts[src.name], "duplicates": 0,
                                "skipped": dict(skipped), "probe": len(rows)}
        records.extend(recs)
        probe.extend(rows)
    return records, probe, rejects, per_source


def build(cfg: InstructionsConfig, folder: Path, log=print) -> stage.StageResult:
    records, probe, rejects, per_source = collect(cfg)
    records, n_contaminated, index_stats = decontaminate(records, cfg, per_source, folder)
    records, dups = dedup(records)
    probe = list({row["id"]: row for row in probe}.values())
    for name, n in dups.items():
        per_source[name]["duplicates"] = n
    train, val = split(records, cfg.val_fraction, cfg.seed)
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "val.jsonl", val)
    if probe:
        write_probe(folder / "probe.jsonl", probe)
    stage.write_json(folder / "alpaca.json", [to_alpaca(r) for r in train])
    if rejects.rows:
        write_jsonl(folder / "rejected.jsonl", rejects.rows)
    counts = {"train": len(train), "val": len(val), "probe": len(probe),
              "rejected": sum(rejects.counts.values()), "duplicates": sum(dups.values())}
    if cfg.decontaminate:
        counts["decontaminated"] = n_contaminated
    stage.write_json(folder / "stats.json", {
        "counts": counts, "sources": per_source,
        "splits": {"train": split_stats(train), "val": split_stats(val)},
        "probe": dict(Counter(r["meta_info"] for r in probe)),
        **({"decontamination": index_stats} if cfg.decontaminate else {}),
    })
    _log_summary(per_source, counts, log)
    # An empty split is named None (like probe), so readers that refuse empty files skip it.
    files = {"train": "train.jsonl", "val": "val.jsonl" if val else None,
             "probe": "probe.jsonl" if probe else None, "alpaca": "alpaca.json"}
    return stage.StageResult(counts=counts, info={"files": files})


def _log_summary(per_source: dict, counts: dict, log) -> None:
    for name, s in per_source.items():
        tasks = ", ".join(f"{t} {n}" for t, n in s["tasks"].items())
        extra = "".join(f", {s[k]} {k}" for k in ("rejected", "decontaminated", "duplicates", "probe")
                        if s.get(k))
        log(f"[instructions] {name} ({s['format']}): {s['records']} records ({tasks}){extra}")
    log(f"[instructions] train {counts['train']}, val {counts['val']}, probe {counts['probe']}, "
        f"duplicates {counts['duplicates']}, rejected {counts['rejected']}"
        + (f", decontaminated {counts['decontaminated']}" if "decontaminated" in counts else ""))


def run(cfg: InstructionsConfig, force: bool = False) -> Path:
    """Build the instruction set into `cfg.out`; a no-op when config and inputs are unchanged."""
    return stage.run_stage("instructions", cfg, cfg.out, inputs=_inputs(cfg),
                           work=lambda folder: build(cfg, folder), force=force)
