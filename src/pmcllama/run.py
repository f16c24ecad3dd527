"""A recipe: the stages in order, each skipped when its output is current.

corpus -> pretrain (knowledge injection) -> instructions -> finetune (instruction tuning)
-> evaluate every model state (base, after knowledge injection, after instruction tuning)
-> table (markdown + JSON + bar chart), paired comparisons of every state against the base
model (report.md/json/png, as `pmcllama report`) and loss curves in the run folder.
Each section (corpus, pretrain, instructions, finetune, evaluate, generate) is that stage's own
config, so `pmcllama STAGE --config RECIPE.yaml --section STAGE` runs it alone. The runner fills
in the fields that link stages (`out`, `data`, `model`, `tokenizer`; see `LINKS`), which a
section may not set. `probe` (recipe only) adds the knowledge probe of the instructions stage
(and its control probe, when built) to the evaluate section's benchmarks.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from pmcllama import corpus, evaluate, finetune, generate, instructions, pretrain
from pmcllama.config import C, Config
from pmcllama.corpus import CorpusConfig
from pmcllama.errors import ConfigError, UserError
from pmcllama.evaluate import BenchmarkSpec, EvaluateConfig
from pmcllama.generate import GenerateConfig
from pmcllama.instructions import InstructionsConfig
from pmcllama.plots import plot_accuracy_bars, plot_losses
from pmcllama.report import make_report
from pmcllama.stage import read_manifest, write_json
from pmcllama.training.config import FinetuneConfig, PretrainConfig


class ProbeConfig(Config):
    """The knowledge probe the instructions stage writes (held-out KG terms), scored for every model state."""

    choices: Literal["letters", "text"] = Field("text", description="score the probe's option letters or texts")
    limit: Optional[int] = Field(None, ge=1, description="score only the first N probe items")


# recipe section -> the fields of its stage config that the runner fills (the links between stages)
LINKS: dict[str, tuple[str, ...]] = {
    "corpus": ("out", "tokenizer"), "pretrain": ("data", "model", "out"), "instructions": ("out",),
    "finetune": ("data", "model", "out"), "evaluate": ("model", "out"), "generate": ("model", "out", "stream"),
}

LINKED_KEYS = frozenset(f"{section}.{key}" for section, keys in LINKS.items() for key in keys)  # not in --help


class RecipeConfig(Config):
    name: str = Field("recipe", description="recipe name, shown in the table")
    out_dir: str = Field("runs/recipe", description="run folder; each stage writes a subfolder")
    base_model: str = Field("smollm2-135m", description="starting model: HF folder, .gguf file or built-in name")
    corpus: Optional[CorpusConfig] = Field(None, description="knowledge corpus (null: no knowledge injection)")
    pretrain: Optional[PretrainConfig] = Field(None, description="knowledge injection training")
    instructions: Optional[InstructionsConfig] = Field(None, description="instruction set")
    finetune: Optional[FinetuneConfig] = Field(None, description="instruction tuning")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="evaluation of every model state")
    probe: Optional[ProbeConfig] = Field(
        ProbeConfig(), description="also score the instructions stage's knowledge probe (null: do not)")
    generate: GenerateConfig = Field(GenerateConfig(), description="completion case studies on the first and last model")

    @model_validator(mode="after")
    def _no_links(self) -> "RecipeConfig":
        for name, links in LINKS.items():
            section = getattr(self, name)
            given = [k for k in links if section is not None and k in section.model_fields_set]
            if given:
                raise ValueError(f"{name}.{given[0]} is filled in by the recipe runner (the stages' links: "
                                 f"{', '.join(links)}); remove it from the recipe")
        return self


def linked(section: C, name: str, **links) -> C:
    """Recipe section `name` as its stage's config: the section with the runner's links filled in."""
    if set(links) != set(LINKS[name]):
        raise ValueError(f"the runner links {name} by {', '.join(LINKS[name])}, not {', '.join(links)}")
    return section.model_copy(update=links)


RUN_MARK = ".pmcllama-run"
RUN_FILES = ("results.md", "results.json", "results.png", "report.md", "report.json", "report.png",
             "loss_curves.png")
STAGE_DIRS = ("corpus", "pretrain", "instructions", "finetune", "eval", "generate")


def claim_run_folder(out: Path, force: bool) -> None:
    """Make `out` the run folder, unless it is a file or a folder of the user's: pmcllama writes
    only into a new or empty folder, or one a run made (marked, or holding stage outputs)."""
    if out.exists() and not out.is_dir():
        raise UserError("out_dir is an existing file, not a folder; choose another out_dir", out)
    ours = (out / RUN_MARK).exists() or any((out / d).is_dir() for d in STAGE_DIRS)
    if out.is_dir() and not ours and any(out.iterdir()):
        if not force:
            raise UserError("out_dir is an existing folder that pmcllama did not write; choose a new "
                            "folder, or --force to add the run beside its files (none of yours is "
                            "removed or overwritten)", out)
        clash = [n for n in RUN_FILES + STAGE_DIRS if (out / n).exists()]
        if clash:
            raise UserError(f"out_dir holds {clash[0]}, which pmcllama did not write and would replace", out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARK).touch()


def _stages(cfg: RecipeConfig, force: bool) -> tuple[list[tuple[str, str]], dict[str, Path]]:
    """Run the building stages; return model states [(label, model)] and stage folders."""
    out = Path(cfg.out_dir)
    states = [("base", cfg.base_model)]
    folders: dict[str, Path] = {}
    model = cfg.base_model
    if cfg.pretrain is not None:
        if cfg.corpus is None:
            raise ConfigError("a recipe with a pretrain section needs a corpus section")
        c = linked(cfg.corpus, "corpus", out=str(out / "corpus"), tokenizer=cfg.base_model)
        folders["corpus"] = corpus.run(c, force=force)
        p = linked(cfg.pretrain, "pretrain", data=str(folders["corpus"]), model=model, out=str(out / "pretrain"))
        folders["pretrain"] = pretrain.run(p, force=force)
        model = str(folders["pretrain"])
        states.append(("knowledge-injected", model))
    if cfg.finetune is not None:
        if cfg.instructions is None:
            raise ConfigError("a recipe with a finetune section needs an instructions section")
        i = linked(cfg.instructions, "instructions", out=str(out / "instructions"))
        folders["instructions"] = instructions.run(i, force=force)
        f = linked(cfg.finetune, "finetune", data=str(folders["instructions"]), model=model, out=str(out / "finetune"))
        folders["finetune"] = finetune.run(f, force=force)
        states.append(("instruction-tuned", str(folders["finetune"])))
    return states, folders


def _benchmarks(cfg: RecipeConfig, folders: dict[str, Path]) -> list[BenchmarkSpec]:
    benches = list(cfg.evaluate.benchmarks)
    if cfg.probe is not None and "instructions" in folders:
        files = read_manifest(folders["instructions"]).get("files") or {}
        for name, key in (("kg-probe", "probe"), ("kg-control", "control")):  # control: terms never trained on
            if files.get(key):
                benches.append(BenchmarkSpec(name=name, format="medqa", path=str(folders["instructions"] / files[key]),
                                             choices=cfg.probe.choices, limit=cfg.probe.limit))
    return benches


def _cell(x: dict | None, metric: str) -> str:
    if not x:
        return "-"
    lo, hi = x.get(f"{metric}_ci95") or (x[metric], x[metric])
    return f"{100 * x[metric]:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"


def results_table(rows: dict[str, dict], name: str) -> str:
    """Markdown table: model state x (benchmark, metric) with 95% CIs, plus baselines."""
    benches = sorted({b for r in rows.values() for b in r})
    cols = [(b, m) for b in benches for m in ("acc", "acc_norm")]
    lines = [f"| {name} | " + " | ".join(f"{b} {m} (95% CI)" for b, m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for label, r in rows.items():
        lines.append(f"| {label} | " + " | ".join(_cell(r.get(b), m) for b, m in cols) + " |")
    first = next(iter(rows.values()), {})
    base = [f"{b}: n={first[b]['n']}, majority class {100 * first[b]['baselines']['majority']:.1f}, "
            f"best constant choice {100 * first[b]['baselines']['constant_choice']['max']:.1f}"
            for b in benches if b in first]
    return "\n".join(lines) + ("\n\nBaselines: " + "; ".join(base) if base else "") + "\n"


def run(cfg: RecipeConfig, force: bool = False) -> Path:
    t0 = time.perf_counter()
    if cfg.corpus is cfg.pretrain is cfg.instructions is cfg.finetune is None \
            and not cfg.evaluate.benchmarks and not cfg.generate.prompts:
        raise ConfigError("the recipe has nothing to do: give at least one of corpus+pretrain, "
                          "instructions+finetune, evaluate.benchmarks or generate.prompts")
    out = Path(cfg.out_dir)
    claim_run_folder(out, force)
    states, folders = _stages(cfg, force)
    benches = _benchmarks(cfg, folders)
    rows: dict[str, dict] = {}
    scored = cfg.evaluate.model_copy(update={"benchmarks": benches})
    for label, model in states if benches else []:
        e = linked(scored, "evaluate", model=model, out=str(out / "eval" / label))
        folder = evaluate.run(e, force=force)
        results = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
        rows[label] = {b.name: results[b.name] for b in benches}
    if cfg.generate.prompts:
        for label, model in (states[0], states[-1]) if len(states) > 1 else states[:1]:
            g = linked(cfg.generate, "generate", model=model, out=str(out / "generate" / label), stream=False)
            generate.run(g, force=force)
    curves = {k: folders[k] / "metrics.jsonl" for k in ("pretrain", "finetune") if k in folders}
    if curves:
        plot_losses({k: v for k, v in curves.items()}, out / "loss_curves.png", title=f"{cfg.name}: training loss")
    if rows:
        table = results_table(rows, cfg.name)
        (out / "results.md").write_text(table, encoding="utf-8")
        write_json(out / "results.json", {"recipe": cfg.name, "states": dict(states), "results": rows})
        plot_accuracy_bars(rows, out / "results.png", metric="acc_norm")
        print("\n" + table)
        if len(rows) > 1:  # paired tests of every later state against the base model
            text = make_report([out], out, metric="acc_norm")
            if "Paired comparison" in text:
                print(text[text.index("Paired comparison"):])
    print(f"[run] {cfg.name} done in {time.perf_counter() - t0:.0f}s; outputs in {out}")
    return out
