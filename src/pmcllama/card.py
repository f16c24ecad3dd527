"""A Hugging Face model card (README.md) written from the stage manifests, nothing typed by hand.

`lineage` walks a model's manifests back: a finetune output names its data (the instructions
folder) and its model (a pretrain folder), a pretrain output its data (the corpus folder) and its
model, until a model that is no pmcllama stage output: the base model. `build_card` renders what
they record (sources with document/token counts, settings, steps, tokens, wall time, hardware,
instruction-set composition, prompt templates), the run folder's evaluation table and paired
report when the model sits in one, the licences the data files state ("unknown — check"
otherwise), and a medical-use disclaimer.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pmcllama.inputs import read_json

DISCLAIMER = ("**Not for medical use.** This model was trained by the pmcllama toolkit for research. "
              "Its answers can be wrong, outdated or harmful; it is not a medical device and must not be "
              "used to diagnose, treat or advise patients. Check every output with a qualified clinician.")
UNKNOWN = "unknown — check"
MODEL_STAGES = ("finetune", "pretrain", "export")
LICENCE_FILES = ("LICENSE", "LICENCE", "COPYING")


def stage_manifest(folder: str | Path | None) -> dict | None:
    """The manifest.json of a stage output folder (a dict with `stage`), else None."""
    if folder is None or not (Path(folder) / "manifest.json").is_file():
        return None
    data = read_json(Path(folder) / "manifest.json", "manifest.json")
    return data if isinstance(data, dict) and "stage" in data else None


def model_name(model: str | Path) -> str:
    """The name a model is published under: a stage output is named by its run and stage
    (runs/quickstart/finetune -> quickstart-finetune), another folder or file by its own name,
    a built-in by itself."""
    path = Path(str(model))
    manifest = stage_manifest(path) if path.is_dir() else None
    if manifest is not None and manifest["stage"] in ("finetune", "pretrain") and path.resolve().parent.name:
        return f"{path.resolve().parent.name}-{path.name}"
    return path.stem if path.suffix == ".gguf" else path.name


def _linked(folder: Path, path: str | None) -> str | None:
    """A stage's link as recorded, or, when it was relative to another working folder, the
    sibling of the same name (a run folder moved or read from elsewhere)."""
    if path is None or Path(path).is_dir():
        return path
    sibling = folder.parent / Path(path).name
    return str(sibling) if (sibling / "manifest.json").is_file() else path


def lineage(model_folder: str | Path) -> tuple[list[tuple[Path, dict]], str]:
    """([(folder, manifest)] from the model back to the corpus, base model name)."""
    chain: list[tuple[Path, dict]] = []
    current: str = str(model_folder)
    while (m := stage_manifest(current)) is not None and m["stage"] in MODEL_STAGES:
        if any(Path(current) == f for f, _ in chain):
            break
        folder = Path(current)
        chain.append((folder, m))
        config = m.get("config") or {}
        data = _linked(folder, config.get("data"))
        if stage_manifest(data) is not None:
            chain.append((Path(data), stage_manifest(data)))
        current = _linked(folder, config.get("model")) or str(m.get("base_model") or "unknown")
    return chain, current


def licence_of(path: Path) -> str | None:
    """The licence a data file states (an OBO header's `license` line) or a LICENSE file beside it."""
    if path.is_file() and path.suffix == ".obo":
        stated = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("[Term]"):
                    break
                url = re.search(r"https?://\S+", line)
                if "license" in line.lower() and url:
                    stated.append((not line.startswith("property_value"), url.group(0).strip('"')))
        if stated:
            return f"{min(stated)[1]} (stated in {path.name})"
    folder = path if path.is_dir() else path.parent
    for name in LICENCE_FILES:
        for f in sorted(folder.glob(name + "*")):
            return f"see {f}"
    return None


def _source_paths(source: dict) -> list[Path]:
    from pmcllama.knowledge.ontology import knowledge_inputs

    if source.get("format") == "kg" or source.get("paths") == ["hpo"]:
        try:
            return list(knowledge_inputs(source.get("ontology", "hpo")))
        except Exception:  # an ontology that is gone since: its licence is unknown
            return []
    return [Path(p) for p in source.get("paths", [])]


def source_licence(source: dict) -> str:
    """What the source's data files state (source configs have no licence field)."""
    found = [lic for p in _source_paths(source) if (lic := licence_of(p))]
    return found[0] if found else UNKNOWN


def base_licence(base: str) -> str:
    """The base model's licence: its GGUF's general.license, or its README's front matter."""
    from pmcllama.models import resolve, smollm2_gguf

    path = Path(base)
    try:
        if base == "smollm2-135m":
            path = smollm2_gguf()
        if path.is_file() and path.suffix == ".gguf":
            import gguf

            field = gguf.GGUFReader(path).fields.get("general.license")
            return str(field.contents()) if field is not None else UNKNOWN
        readme = resolve(base) / "README.md"
    except Exception:  # a base model that is gone: its licence is unknown
        return UNKNOWN
    text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
    front = text.split("---")[1] if text.startswith("---") else ""
    for line in front.splitlines():
        if line.startswith("license:"):
            return line.split(":", 1)[1].strip()
    return UNKNOWN


def _settings(m: dict) -> list[str]:
    c, train = m.get("config") or {}, m.get("train") or {}
    keys = ("seq_len", "global_batch", "micro_batch", "lr", "epochs", "max_steps", "precision", "template",
            "packing", "seed")
    lines = [f"- settings: " + ", ".join(f"{k}={c[k]}" for k in keys if c.get(k) is not None)]
    if c.get("lora"):
        lines.append(f"- LoRA: {json.dumps(c['lora'])} (merged into the weights)")
    counts = m.get("counts") or {}
    lines.append(f"- trained: {counts.get('steps')} steps, {counts.get('tokens')} tokens"
                 + (f", {counts['examples']} examples" if "examples" in counts else "")
                 + f", wall time {(m.get('timings') or {}).get('wall_s')} s")
    lines.append(f"- hardware: device {train.get('device')}, {train.get('processes')} process(es), "
                 f"precision {train.get('precision')}, peak RSS {train.get('rss_peak_mib')} MiB")
    if train.get("val_loss") is not None:
        lines.append(f"- validation loss: {train['val_loss']}")
    return lines


def _corpus(m: dict) -> list[str]:
    lines = ["| source | documents | tokens | weight | licence |", "|---|---|---|---|---|"]
    configs = {s["name"]: s for s in (m.get("config") or {}).get("sources", [])}
    for name, s in (m.get("sources") or {}).items():
        lines.append(f"| {name} | {s.get('documents')} | {s.get('tokens')} | {s.get('weight')} | "
                     f"{source_licence(configs.get(name, {}))} |")
    counts = m.get("counts") or {}
    lines.append(f"\nDocuments read {counts.get('documents_in')}, kept {counts.get('documents_kept')}, "
                 f"dropped {counts.get('documents_dropped')}; tokenizer {m.get('tokenizer')}.")
    return lines


def _instructions(folder: Path, m: dict) -> list[str]:
    stats_path = folder / "stats.json"
    stats = read_json(stats_path, "stats.json") if stats_path.is_file() else {}
    configs = {s["name"]: s for s in (m.get("config") or {}).get("sources", [])}
    lines = ["| source | format | train | val | tasks | licence |", "|---|---|---|---|---|---|"]
    for name, s in (stats.get("sources") or {}).items():
        tasks = ", ".join(f"{k} {v}" for k, v in (s.get("tasks") or {}).items())
        lines.append(f"| {name} | {s.get('format')} | {s.get('train')} | {s.get('val')} | {tasks} | "
                     f"{source_licence(configs.get(name, {}))} |")
    lines.append(f"\nCounts: {json.dumps(m.get('counts') or {})}.")
    system = (m.get("config") or {}).get("system_prompt")
    if system:
        lines.append(f"System prompt: \"{system}\"")
    return lines


def _evaluation(run: Path, chain_folders: set[Path]) -> list[str]:
    """The run folder's table and paired report, and the prompt templates its evaluations used."""
    lines = []
    for name in ("results.md", "report.md"):
        if (run / name).is_file():
            lines += [f"From `{name}` of the run folder:", "", (run / name).read_text(encoding="utf-8").strip(), ""]
    templates = {}
    for results in sorted((run / "eval").glob("*/results.json")):
        data = read_json(results, "results.json")
        for bench, r in data.items():
            if isinstance(r, dict) and r.get("prompt_template"):
                templates.setdefault(bench, set()).add(r["prompt_template"])
    if templates:
        lines.append("Evaluation prompt templates: " + "; ".join(
            f"{b}: {', '.join(sorted(v))}" for b, v in sorted(templates.items())) + ".")
    return lines


def _stage_section(folder: Path, m: dict) -> list[str]:
    stage = m["stage"]
    head = [f"### {stage} (`{folder.name}`)", "",
            f"Made {m.get('created')} by pmcllama {m.get('pmcllama_version')} (git {m.get('git_revision')})."]
    if stage == "corpus":
        return head + [""] + _corpus(m)
    if stage == "instructions":
        return head + [""] + _instructions(folder, m)
    if stage == "export":
        return head
    return head + ["", f"- from model: {(m.get('config') or {}).get('model')}"] + _settings(m)


def build_card(model_folder: str | Path, name: str) -> str:
    """README.md text for the model at `model_folder` (shown as `name`)."""
    chain, base = lineage(model_folder)
    licence = base_licence(base)
    front = ["---", f"license: {licence if licence != UNKNOWN else 'other'}", f"base_model: {base}",
             "library_name: transformers", "pipeline_tag: text-generation",
             "tags:", "- medical", "- pmcllama", "- llama", "---", ""]
    lines = front + [f"# {name}", "", DISCLAIMER, "", "## Base model", "",
                     f"{base} (licence: {licence}).", "", "## How it was made", ""]
    if not chain:
        lines.append("No pmcllama stage manifest: this model's training history is not recorded here.")
    order = [c for c in reversed(chain) if c[1]["stage"] != "export"]
    lines.append("Stages, first to last: " + " -> ".join(f"{m['stage']} (`{f}`)" for f, m in order) + "." if order else "")
    for folder, m in order:
        lines += [""] + _stage_section(folder, m)
    models = [f for f, m in chain if m["stage"] in ("finetune", "pretrain")]
    run = models[0].parent if models else None
    evaluation = _evaluation(run, {f for f, _ in chain}) if run is not None else []
    lines += ["", "## Evaluation", ""] + (evaluation or ["No evaluation recorded beside this model."])
    templates = [f"{m['stage']}: template {m['config']['template']}" for _, m in order
                 if (m.get("config") or {}).get("template")]
    templates += [f"instructions source {s['name']}: answer format {s.get('answer_format')}" for _, m in order
                  if m["stage"] == "instructions" for s in (m.get("config") or {}).get("sources", [])
                  if s.get("format") != "kg"]
    lines += ["", "## Prompt templates", ""] + ([f"- {t}" for t in templates] or ["None recorded."])
    return "\n".join(lines).rstrip() + "\n"
