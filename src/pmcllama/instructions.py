"""STAGE 3a  Build the instruction set: chat records, train/validation split, knowledge probe.

Sources, each named:
- `alpaca`: .json arrays or .jsonl files of {instruction, input, output} (ChatDoctor,
  PMC-LLaMA's MedC-I release, ...) -> one user turn (instruction + input) and one answer,
- `kg`: an ontology (built-in `hpo` or an .obo file) -> knowledge-graph prompts
  (description, relation, two kinds of multiple choice); the first `probe_terms` selected
  terms are held out and become the knowledge probe (MedQA-USMLE JSONL layout) instead.

Output folder: train.jsonl, val.jsonl ({id, source, task, messages}), probe.jsonl (when asked
for), alpaca.json (the train split in the Alpaca layout), stats.json, rejected.jsonl (records
skipped under `on_error: skip`), manifest.json. Identical (prompt, answer) pairs are kept once.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, model_validator

from pmcllama import stage
from pmcllama.config import Config, require_unique_names
from pmcllama.errors import UserError
from pmcllama.knowledge.prompts import TASKS, kg_prompts, probe_rows, write_probe

DEFAULT_SYSTEM_PROMPT = (
    "You are a knowledgeable and careful medical assistant. Answer accurately and concisely."
)
KGTask = Literal["description", "relation", "mcq_definition", "mcq_parent"]
KG_ONLY = ("root", "limit", "seed_terms", "tasks", "probe_terms", "ontology")
ALPACA_ONLY = ("max_records", "task")


class InstructionSource(Config):
    name: str = Field(description="source name, used in record ids and statistics")
    format: Literal["alpaca", "kg"] = Field(
        description="alpaca: {instruction, input, output} records; kg: prompts from an ontology")
    paths: list[str] = Field(default_factory=list,
                             description="alpaca: .json array or .jsonl files of {instruction, input, output}")
    max_records: int | None = Field(None, ge=1, description="alpaca: keep at most this many records (None = all)")
    task: Literal["auto", "dialogue", "qa"] = Field(
        "auto", description="alpaca: task label; auto = dialogue when a record has an input, else qa")
    ontology: str = Field("hpo", description="kg: built-in ontology name (hpo) or an .obo file")
    root: str | None = Field(None, description="kg: only terms below this term id (None = all terms)")
    limit: int | None = Field(None, ge=1, description="kg: at most this many terms (same as the corpus stage)")
    seed_terms: int = Field(0, description="kg: seed of the term selection (same as the corpus stage)")
    tasks: list[KGTask] = Field(default_factory=lambda: list(TASKS), min_length=1,
                                description="kg: prompt kinds to build")
    probe_terms: int = Field(0, ge=0, description="kg: the first N selected terms form the knowledge probe, not training")

    @model_validator(mode="after")
    def _check_format(self) -> "InstructionSource":
        if self.format == "alpaca":
            if not self.paths:
                raise ValueError(f"alpaca source '{self.name}' needs paths: [file.json, ...]")
            given = sorted(set(KG_ONLY) & self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)} only apply to format: kg (source '{self.name}')")
        elif self.paths:
            raise ValueError(f"kg source '{self.name}' reads `ontology`, not `paths`")
        elif set(ALPACA_ONLY) & self.model_fields_set:
            given = ", ".join(sorted(set(ALPACA_ONLY) & self.model_fields_set))
            raise ValueError(f"{given} only apply to format: alpaca (source '{self.name}'; use limit for kg)")
        return self


class InstructionsConfig(Config):
    out: str = Field("runs/instructions", description="output folder")
    sources: list[InstructionSource] = Field(min_length=1, description="instruction sources")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of records held out for validation")
    seed: int = Field(0, description="seed of the split, prompt templates, distractors and answer letters")
    system_prompt: str | None = Field(DEFAULT_SYSTEM_PROMPT, description="system turn of every record (None = none)")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="a malformed record: stop with an error, or skip it into rejected.jsonl")

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


def _alpaca_items(path: Path) -> Iterator[tuple[int | None, int | None, Any, str | None]]:
    """(line, item index, value, error) for every record of a .json array or .jsonl file."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise UserError("an alpaca source file must be .json (an array) or .jsonl", path)
    try:
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        yield n, None, json.loads(line), None
                    except json.JSONDecodeError as e:
                        yield n, None, line.rstrip("\n")[:1000], f"not valid JSON: {e.msg} at column {e.colno}"
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            yield e.lineno, None, None, f"not valid JSON: {e.msg} at column {e.colno}"
            return
    except UnicodeDecodeError as e:
        raise UserError(f"not valid UTF-8: {e.reason}", path) from None
    if not isinstance(data, list):
        yield None, None, None, f"a .json source must be an array of records, not a {type(data).__name__}"
        return
    for i, obj in enumerate(data):
        yield None, i, obj, None


def _check_alpaca(obj: Any) -> tuple[str, str, str]:
    """(instruction, input, output) of a record, or ValueError naming what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"a record must be a JSON object, not {type(obj).__name__}")
    for key in ("instruction", "output"):
        if key not in obj:
            raise ValueError(f"missing '{key}'")
    values = []
    for key in ("instruction", "input", "output"):
        value = obj.get(key)
        value = "" if value is None and key == "input" else value
        if not isinstance(value, str):
            raise ValueError(f"'{key}' is not a string ({type(value).__name__})")
        values.append(value.strip())
    if not values[2]:
        raise ValueError("empty output")
    if not values[0] and not values[1]:
        raise ValueError("empty instruction and input")
    return values[0], values[1], values[2]


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
    return paths


def collect(cfg: InstructionsConfig) -> tuple[list[dict], list[dict], Rejects, dict]:
    """All records, probe rows, rejects and per-source statistics."""
    rejects = Rejects(cfg.on_error)
    records, probe, per_source = [], [], {}
    for src in cfg.sources:
        skipped, rows = Counter(), []
        if src.format == "alpaca":
            recs = read_alpaca(src, cfg.system_prompt, rejects)
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
    stage.write_json(folder / "stats.json", {
        "counts": counts, "sources": per_source,
        "splits": {"train": split_stats(train), "val": split_stats(val)},
        "probe": dict(Counter(r["meta_info"] for r in probe)),
    })
    for name, s in per_source.items():
        tasks = ", ".join(f"{t} {n}" for t, n in s["tasks"].items())
        extra = "".join(f", {s[k]} {k}" for k in ("rejected", "duplicates", "probe") if s.get(k))
        log(f"[instructions] {name} ({s['format']}): {s['records']} records ({tasks}){extra}")
    log(f"[instructions] train {counts['train']}, val {counts['val']}, probe {counts['probe']}, "
        f"duplicates {counts['duplicates']}, rejected {counts['rejected']}")
    # An empty split is named None (like probe), so readers that refuse empty files skip it.
    files = {"train": "train.jsonl", "val": "val.jsonl" if val else None,
             "probe": "probe.jsonl" if probe else None, "alpaca": "alpaca.json"}
    return stage.StageResult(counts=counts, info={"files": files})


def run(cfg: InstructionsConfig, force: bool = False) -> Path:
    """Build the instruction set into `cfg.out`; a no-op when config and inputs are unchanged."""
    return stage.run_stage("instructions", cfg, cfg.out, inputs=_inputs(cfg),
                           work=lambda folder: build(cfg, folder), force=force)
