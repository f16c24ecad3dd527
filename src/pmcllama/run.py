"""A recipe: the stages in order, each skipped when its output is current.

corpus -> instructions (every instruction set is built before any training, so a set that
decontamination empties stops the run before it trains) -> pretrain (knowledge injection) ->
finetune (instruction tuning) -> ablation arms (task fine-tuning of several model states, see
`pmcllama.ablation`) -> evaluate every model state (base, after knowledge injection, after
instruction tuning, each arm) -> table (markdown + JSON + bar chart with each benchmark's
baselines), paired comparisons (every state against the base model, every arm against its
twin; report.md/json/png, as `pmcllama report`) and loss curves in the run folder.
Each section (corpus, pretrain, instructions, finetune, evaluate, generate) is that stage's own
config, so `pmcllama STAGE --config RECIPE.yaml --section STAGE` runs it alone. The runner fills
in the fields that link stages (`out`, `data`, `model`, `tokenizer`; see `LINKS`), which a
section may not set, and adds evaluate's benchmark files to every instruction set's
`decontaminate` list; an evaluation file that is also a training file is refused. `probe`
(recipe only) adds the knowledge probe of the instructions stage
(and its control probe, when built) to the evaluate section's benchmarks.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from pmcllama import corpus, evaluate, finetune, generate, instructions, pretrain
from pmcllama.ablation import STARTS, AblationConfig, arm_finetune, check_held_out, twins
from pmcllama.config import C, Config
from pmcllama.corpus import CorpusConfig
from pmcllama.data.decontam import parse_spec
from pmcllama.errors import ConfigError, UserError
from pmcllama.evaluate import BenchmarkSpec, EvaluateConfig
from pmcllama.export_hf import RecipeExport, export_run
from pmcllama.generate import GenerateConfig
from pmcllama.instructions import InstructionsConfig
from pmcllama.judge import JudgeSection, judge_recipe
from pmcllama.plots import plot_accuracy_bars, plot_losses
from pmcllama.report import make_report, one_accuracy
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
    "ablation.instructions": ("out",), "ablation.finetune": ("data", "model", "out"),
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
    ablation: Optional[AblationConfig] = Field(
        None, description="task fine-tuning arms from several model states, each paired with its twin "
                          "in the report (the paper's Table 1; see pmcllama.ablation)")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="evaluation of every model state")
    probe: Optional[ProbeConfig] = Field(
        ProbeConfig(), description="also score the instructions stage's knowledge probe (null: do not)")
    generate: GenerateConfig = Field(GenerateConfig(), description="completion case studies on the first and last model")
    judge: Optional[JudgeSection] = Field(
        JudgeSection(), description="LLM judge of the first vs last model's completions (skipped without base_url)")
    export: Optional[RecipeExport] = Field(None, description="export the last model: GGUF files, a model-card folder")

    def section(self, name: str):
        """Recipe section by its LINKS name ('finetune', 'ablation.finetune', ...); None when absent."""
        obj = self
        for part in name.split("."):
            obj = getattr(obj, part) if obj is not None else None
        return obj

    @model_validator(mode="after")
    def _no_links(self) -> "RecipeConfig":
        for name, links in LINKS.items():
            section = self.section(name)
            given = [k for k in links if section is not None and k in section.model_fields_set]
            if given:
                raise ValueError(f"{name}.{given[0]} is filled in by the recipe runner (the stages' links: "
                                 f"{', '.join(links)}); remove it from the recipe")
        return self

    @model_validator(mode="after")
    def _arms_have_their_stages(self) -> "RecipeConfig":
        if self.ablation is None:
            return self
        have = {"base": True, "pretrain": self.pretrain is not None, "finetune": self.finetune is not None}
        for arm in self.ablation.arms:
            if not have[arm.start]:
                raise ValueError(f"ablation arm '{arm.name}' starts from {arm.start}, but the recipe has no "
                                 f"{arm.start} section")
        if self.ablation.instructions is None and self.instructions is None:
            raise ValueError("ablation arms need a task fine-tuning set: ablation.instructions or an "
                             "instructions section")
        if self.ablation.finetune is None and self.finetune is None:
            raise ValueError("ablation arms need their settings: ablation.finetune or a finetune section")
        for arm in self.ablation.arms:
            arm_finetune(self.arm_settings, arm)
        return self

    @property
    def arm_settings(self) -> FinetuneConfig:
        """The finetune settings the ablation arms share."""
        return self.ablation.finetune or self.finetune


def linked(section: C, name: str, **links) -> C:
    """Recipe section `name` as its stage's config: the section with the runner's links filled in."""
    if set(links) != set(LINKS[name]):
        raise ValueError(f"the runner links {name} by {', '.join(LINKS[name])}, not {', '.join(links)}")
    return section.model_copy(update=links)


RUN_MARK = ".pmcllama-run"
RUN_FILES = ("results.md", "results.json", "results.png", "report.md", "report.json", "report.png",
             "loss_curves.png", "ablation_loss.png")
STAGE_DIRS = ("corpus", "pretrain", "instructions", "finetune", "ablation", "eval", "generate")
EXPORTS = ("judge", "card")  # folders of the judge and export sections (model-<dtype>.gguf files beside)


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
        clash = [n for n in RUN_FILES + STAGE_DIRS + EXPORTS if (out / n).exists()]
        clash += sorted(p.name for p in out.glob("model-*.gguf"))  # the export section's GGUF files
        if clash:
            raise UserError(f"out_dir holds {clash[0]}, which pmcllama did not write and would replace", out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARK).touch()


def _decontam_spec(b: BenchmarkSpec) -> str:
    return f"{'jsonl' if b.format == 'mcq' else b.format}:{b.path}"


def held_out(cfg: RecipeConfig, section: InstructionsConfig) -> InstructionsConfig:
    """An instruction set decontaminated against the recipe's evaluation files as well."""
    specs = [_decontam_spec(b) for b in cfg.evaluate.benchmarks if Path(b.path).is_file()]
    given = {parse_spec(s)[1].resolve() for s in section.decontaminate}
    extra = [s for s in specs if parse_spec(s)[1].resolve() not in given]
    return section.model_copy(update={"decontaminate": [*section.decontaminate, *extra]}) if extra else section


def check_training_files(cfg: RecipeConfig) -> None:
    """No evaluation file is also one of the corpus's or an instruction set's inputs."""
    training: dict[str, list[str]] = {}
    for where, section in (("corpus", cfg.corpus), ("instructions", cfg.instructions),
                           ("ablation.instructions", cfg.ablation and cfg.ablation.instructions)):
        for src in section.sources if section is not None else []:
            training[f"{where} source '{src.name}'"] = list(src.paths)
    check_held_out({b.name: b.path for b in cfg.evaluate.benchmarks}, training)


def _data(cfg: RecipeConfig, force: bool) -> dict[str, Path]:
    """Build the corpus and every instruction set (before any training starts)."""
    out, folders = Path(cfg.out_dir), {}
    if cfg.pretrain is not None:
        if cfg.corpus is None:
            raise ConfigError("a recipe with a pretrain section needs a corpus section")
        c = linked(cfg.corpus, "corpus", out=str(out / "corpus"), tokenizer=cfg.base_model)
        folders["corpus"] = corpus.run(c, force=force)
    arms = cfg.ablation
    if cfg.finetune is not None or (arms is not None and arms.instructions is None):
        if cfg.instructions is None:
            raise ConfigError("a recipe with a finetune section needs an instructions section")
        i = linked(held_out(cfg, cfg.instructions), "instructions", out=str(out / "instructions"))
        folders["instructions"] = instructions.run(i, force=force)
    if arms is not None and arms.instructions is not None:
        i = linked(held_out(cfg, arms.instructions), "ablation.instructions", out=str(out / "ablation" / "instructions"))
        folders["ablation-instructions"] = instructions.run(i, force=force)
    return folders


def _stages(cfg: RecipeConfig, force: bool) -> tuple[list[tuple[str, str]], dict[str, Path]]:
    """Run the building stages; return model states [(label, model)] and stage folders."""
    out = Path(cfg.out_dir)
    folders = _data(cfg, force)
    states = [("base", cfg.base_model)]
    model = cfg.base_model
    if cfg.pretrain is not None:
        p = linked(cfg.pretrain, "pretrain", data=str(folders["corpus"]), model=model, out=str(out / "pretrain"))
        folders["pretrain"] = pretrain.run(p, force=force)
        model = str(folders["pretrain"])
        states.append((STARTS["pretrain"], model))
    if cfg.finetune is not None:
        f = linked(cfg.finetune, "finetune", data=str(folders["instructions"]), model=model, out=str(out / "finetune"))
        folders["finetune"] = finetune.run(f, force=force)
        states.append((STARTS["finetune"], str(folders["finetune"])))
    if cfg.ablation is not None:
        starts = dict(states)
        data = folders.get("ablation-instructions", folders.get("instructions"))
        for arm in cfg.ablation.arms:
            f = linked(arm_finetune(cfg.arm_settings, arm), "ablation.finetune", data=str(data),
                       model=starts[STARTS[arm.start]], out=str(out / "ablation" / arm.name))
            folders[f"arm:{arm.name}"] = finetune.run(f, force=force)
            states.append((arm.name, str(folders[f"arm:{arm.name}"])))
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


def _evaluations(cfg: RecipeConfig, states: list[tuple[str, str]], benches: list[BenchmarkSpec]
                 ) -> list[tuple[str, str, EvaluateConfig]]:
    """(label, model, evaluate settings) of every scored model: each state with evaluate's settings;
    with ablation modes [generate], each arm again with greedy answers in its training format."""
    scored = cfg.evaluate.model_copy(update={"benchmarks": benches})
    arms = {a.name: a for a in cfg.ablation.arms} if cfg.ablation else {}
    modes = cfg.ablation.modes if cfg.ablation else ["loglik"]
    out = [(label, model, scored) for label, model in states if "loglik" in modes or label not in arms]
    if "generate" in modes:
        for label, model in states:
            if label in arms:
                template = arm_finetune(cfg.arm_settings, arms[label]).template
                gen = scored.model_copy(update={"mode": "generate", "temperature": 0.0, "self_consistency": 1,
                                                "max_new_tokens": cfg.ablation.max_new_tokens,
                                                "chat_template": template == "chat"})
                out.append((f"{label}.generate", model, gen))
    return out


def _pairs(cfg: RecipeConfig, labels: list[str]) -> list[list[str]]:
    """[model, against] of the report: every main state against the base model, every arm against
    its twin (in each evaluation mode)."""
    arm_names = {a.name for a in cfg.ablation.arms} if cfg.ablation else set()
    pairs = [[label, "base"] for label in labels if label != "base" and label.split(".")[0] not in arm_names]
    for arm, twin in (twins(cfg.ablation.arms) if cfg.ablation else {}).items():
        for suffix in ("", ".generate"):
            if arm + suffix in labels and twin + suffix in labels:
                pairs.append([arm + suffix, twin + suffix])
    return pairs


def _curves(cfg: RecipeConfig, folders: dict[str, Path]) -> None:
    out = Path(cfg.out_dir)
    curves = {k: folders[k] / "metrics.jsonl" for k in ("pretrain", "finetune") if k in folders}
    if curves:
        plot_losses(curves, out / "loss_curves.png", title=f"{cfg.name}: training loss")
    if cfg.ablation:  # the paper's Fig. 2: each arm's curve beside its twin's
        arms = {a.name: folders[f"arm:{a.name}"] / "metrics.jsonl" for a in cfg.ablation.arms}
        plot_losses(arms, out / "ablation_loss.png", title=f"{cfg.name}: task fine-tuning loss",
                    ema=cfg.ablation.ema, twins=twins(cfg.ablation.arms))


def run(cfg: RecipeConfig, force: bool = False) -> Path:
    t0 = time.perf_counter()
    if cfg.corpus is cfg.pretrain is cfg.instructions is cfg.finetune is None \
            and not cfg.evaluate.benchmarks and not cfg.generate.prompts:
        raise ConfigError("the recipe has nothing to do: give at least one of corpus+pretrain, "
                          "instructions+finetune, evaluate.benchmarks or generate.prompts")
    check_training_files(cfg)
    out = Path(cfg.out_dir)
    claim_run_folder(out, force)
    states, folders = _stages(cfg, force)
    benches = _benchmarks(cfg, folders)
    rows: dict[str, dict] = {}
    scored = _evaluations(cfg, states, benches) if benches else []
    for label, model, settings in scored:
        folder = evaluate.run(linked(settings, "evaluate", model=model, out=str(out / "eval" / label)), force=force)
        results = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
        rows[label] = {b.name: one_accuracy(results[b.name]) for b in benches}
    main = [s for s in states if s[0] in ("base", *STARTS.values())]
    if cfg.generate.prompts:
        for label, model in (main[0], main[-1]) if len(main) > 1 else main[:1]:
            g = linked(cfg.generate, "generate", model=model, out=str(out / "generate" / label), stream=False)
            generate.run(g, force=force)
    _curves(cfg, folders)
    if rows:
        table = results_table(rows, cfg.name)
        (out / "results.md").write_text(table, encoding="utf-8")
        pairs = _pairs(cfg, list(rows))
        write_json(out / "results.json", {"recipe": cfg.name, "states": {k: m for k, m, _ in scored},
                                          "pairs": pairs, "results": rows})
        plot_accuracy_bars(rows, out / "results.png", metric="acc_norm")
        print("\n" + table)
        if pairs:  # paired tests: later states against the base model, arms against their twins
            text = make_report([out], out, metric="acc_norm")
            if "Paired comparison" in text:
                print(text[text.index("Paired comparison"):])
    judge_recipe(cfg.judge, out, main, cfg.generate.prompts, force)
    export_run(cfg.export, main[-1][1], out, force)
    print(f"[run] {cfg.name} done in {time.perf_counter() - t0:.0f}s; outputs in {out}")
    return out
