"""`pmcllama` command line: one table {command: stage}; `pmcllama --help` lists the pipeline.

Every stage command takes `--config FILE.yaml` plus `key.sub=value` overrides, `--force`
to redo a stage whose output is current, and `--debug` to show tracebacks. Bad input exits
with status 2 and one line naming the file, line and problem.
"""
from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Callable, List, Optional

import typer

from pmcllama.config import describe, load_config
from pmcllama.errors import UserError

# The pipeline, in order: command -> (module, config class, one-line help).
STAGES: dict[str, tuple[str, str, str]] = {
    "corpus": ("pmcllama.corpus", "CorpusConfig", "STAGE 1  text -> cleaned documents -> token shards"),
    "pretrain": ("pmcllama.pretrain", "PretrainConfig", "STAGE 2  knowledge injection (continued pretraining)"),
    "instructions": ("pmcllama.instructions", "InstructionsConfig", "STAGE 3a build the instruction set (chat JSONL)"),
    "finetune": ("pmcllama.finetune", "FinetuneConfig", "STAGE 3b instruction tuning, full or LoRA"),
    "evaluate": ("pmcllama.evaluate", "EvaluateConfig", "STAGE 4  medical QA accuracy (log-likelihood, generation, chain-of-thought)"),
    "generate": ("pmcllama.generate", "GenerateConfig", "STAGE 5  complete prompts, streamed"),
    "serve": ("pmcllama.serve", "ServeConfig", "STAGE 5  OpenAI-compatible API server with a web chat page"),
    "chat": ("pmcllama.serve.chat", "ChatConfig", "STAGE 5  chat with a model in the terminal"),
    "judge": ("pmcllama.judge", "JudgeConfig", "JUDGE    two sets of completions compared by an LLM judge, both orders"),
    "run": ("pmcllama.run", "RecipeConfig", "RECIPE   every stage in order, then the results table"),
}

app = typer.Typer(
    help="pmcllama: build medical language models the PMC-LLaMA way.\n\n"
    "Pipeline: corpus -> pretrain -> instructions -> finetune -> evaluate -> generate, serve, chat; "
    "`run RECIPE.yaml` does them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\[\]]*=")
_state = {"debug": bool(os.environ.get("PMCLLAMA_DEBUG"))}


def fail(err: BaseException) -> None:
    """Report a user error in one line and exit 2 (or re-raise with --debug)."""
    if _state["debug"]:
        raise err
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


def guarded(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except UserError as e:
        fail(e)
    except OSError as e:  # the file system said no: unwritable, full, not a folder, ...
        fail(UserError(e.strerror or str(e), e.filename))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


def _bare_arguments(name: str, overs: list[str], cfg_path: Path | None) -> tuple[Path | None, list[str], list[str]]:
    """(config file, key=value overrides, prompts) from a command's arguments: the words that are
    not key=value are run's recipe, serve's and chat's model, judge's two files, generate's prompts."""
    if name == "run" and overs and "=" not in overs[0]:
        cfg_path = Path(overs.pop(0))  # `pmcllama run RECIPE.yaml`
    if name == "run" and cfg_path is None:
        raise UserError("pmcllama run needs a recipe: pmcllama run RECIPE.yaml [key=value ...] "
                        "(recipes/quickstart.yaml is one)")
    if name in ("serve", "chat") and overs and not _OVERRIDE.match(overs[0]):
        overs[0] = f"model={overs[0]}"  # `pmcllama serve MODEL`
    if name == "judge":  # `pmcllama judge A.jsonl B.jsonl`
        bare = [o for o in overs if not _OVERRIDE.match(o)]
        if len(bare) not in (0, 2):
            raise UserError(f"pmcllama judge takes two generations files (A and B), not {len(bare)}: "
                            "pmcllama judge A.jsonl B.jsonl base_url=URL")
        overs = [f"{k}={v}" for k, v in zip("ab", bare)] + [o for o in overs if _OVERRIDE.match(o)]
    if name == "generate":  # bare arguments are prompts
        return cfg_path, [o for o in overs if _OVERRIDE.match(o)], [o for o in overs if not _OVERRIDE.match(o)]
    return cfg_path, overs, []


def _stage_command(name: str, module: str, cls_name: str, summary: str) -> None:
    def command(
        overrides: Optional[List[str]] = typer.Argument(None, help="config overrides, key.sub=value"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
        force: bool = typer.Option(False, "--force", help="redo the stage even if its output is current"),
        section: Optional[str] = typer.Option(
            None, "--section", help="read the config from this section of the YAML file, e.g. "
            "--config recipes/paper-7b.yaml --section pretrain (a recipe's stage, run on its own; "
            "nested: --section ablation.finetune)"),
    ) -> None:
        def go():
            mod = importlib.import_module(module)
            cfg_path, overs, prompts = _bare_arguments(name, list(overrides or []), config)
            cfg = load_config(getattr(mod, cls_name), cfg_path, overs, section=section)
            if prompts:
                cfg.prompts = list(cfg.prompts) + prompts
            return mod.run(cfg, force=force)

        guarded(go)

    # stage modules keep torch/transformers imports inside functions, so --help stays fast
    mod = importlib.import_module(module)
    lines = describe(getattr(mod, cls_name), omit=getattr(mod, "LINKED_KEYS", frozenset()))
    fields = "\b\nConfig keys (YAML or key.sub=value):\n" + "\n".join("  " + ln for ln in lines)
    usage = "pmcllama run RECIPE.yaml [key=value ...]" if name == "run" else \
        f"pmcllama {name} [--config FILE.yaml] [key.sub=value ...]"
    if name == "generate":
        usage += ' ["prompt" ...]'
    if name in ("serve", "chat"):
        usage = f"pmcllama {name} MODEL [key=value ...]"
    if name == "judge":
        usage = "pmcllama judge A.jsonl B.jsonl base_url=URL [key=value ...]\n" \
            "pmcllama judge model_a=M1 model_b=M2 base_url=URL [prompts_file=FILE] [key=value ...]"
    command.__doc__ = f"{(mod.__doc__ or summary).strip()}\n\n\b\n{usage}"
    app.command(name=name, help=command.__doc__, short_help=summary, epilog=fields)(command)


for _name, (_module, _cls, _summary) in STAGES.items():
    _stage_command(_name, _module, _cls, _summary)


@app.command("report", short_help="REPORT   models x benchmarks table with CIs and paired tests")
def report_cmd(
    folders: List[Path] = typer.Argument(..., metavar="RUN_OR_EVAL_DIR",
                                         help="evaluate output folders and/or recipe run folders"),
    out: Path = typer.Option(Path("runs/report"), "--out", help="folder for report.md, report.json, report.png"),
    metric: str = typer.Option("acc", "--metric", help="acc or acc_norm"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples for the paired CIs"),
    seed: int = typer.Option(0, "--seed", help="bootstrap random seed"),
) -> None:
    """Compare evaluated models: a table like the paper's Table 1 plus paired tests.

    \b
    pmcllama report runs/eval_base runs/eval_tuned --out runs/report
    pmcllama report runs/quickstart                 every eval/<state>/ of a recipe run
    """
    from pmcllama.report import make_report

    def go():
        typer.echo(make_report(list(folders), out, metric, bootstrap, seed), nl=False)
        typer.echo(f"[report] wrote {out}/report.md, report.json, report.png")

    guarded(go)


@app.command("plot", short_help="PLOT     overlay the loss curves of several training runs")
def plot_cmd(
    runs: List[Path] = typer.Argument(..., metavar="RUN", help="training output folders (or their metrics.jsonl)"),
    out: Path = typer.Option(Path("loss_curves.png"), "--out", help="PNG file to write"),
    x: str = typer.Option("tokens", "--x", help="x axis: tokens (tokens seen) or step"),
    title: str = typer.Option("training loss", "--title", help="plot title"),
) -> None:
    """Overlay training (and validation) loss curves of pretrain/finetune runs, like the paper's Fig. 2.

    \b
    pmcllama plot runs/finetune_base runs/finetune_pmc --out compare.png
    """
    from pmcllama.plots import loss_series, plot_losses

    def go():
        if x not in ("tokens", "step"):
            raise UserError(f"--x must be tokens or step, not {x!r}")
        curves = {}
        for run in runs:
            metrics = run / "metrics.jsonl" if run.is_dir() else run
            if not metrics.is_file():
                raise UserError("no metrics.jsonl: not a pretrain/finetune output folder", run)
            if not loss_series(metrics, x)["x"]:
                raise UserError("no training-loss rows (the run has not logged a step yet)", metrics)
            label = (run if run.is_dir() else run.parent).name
            curves[label if label not in curves else str(run)] = metrics
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_losses(curves, out, title=title, x=x)
        typer.echo(f"[plot] wrote {out} ({len(curves)} runs)")

    guarded(go)


@app.command("models", short_help="MODELS   list the built-ins, or inspect one")
def models_cmd(
    name: Optional[str] = typer.Argument(None, help="a model: folder, .gguf file, or built-in name"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List the built-in models, or inspect one (architecture, parameters, vocab, context, dtype).

    \b
    pmcllama models                 the built-ins
    pmcllama models PATH_OR_NAME    inspect a folder, .gguf file or built-in
    """
    from pmcllama import models

    def go():
        if name is None:
            for key, text in models.BUILTINS.items():
                typer.echo(f"{key:14s} {text}")
            typer.echo("\nAlso accepted: a local Hugging Face folder or a local .gguf file.")
            return
        info = models.model_info(name)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
        else:
            for k, v in info.items():
                typer.echo(f"{k:16s} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:16s} {v}")

    guarded(go)


@app.command("export", short_help="EXPORT   a GGUF file for llama.cpp, or a Hugging Face folder with a model card")
def export_cmd(
    model: str = typer.Argument(..., help="a model: folder, stage output, .gguf file or built-in name"),
    options: Optional[List[str]] = typer.Argument(
        None, metavar="[dtype=...] [max_shard_size=...] [name=...]",
        help="FILE.gguf: dtype=f32 (default), f16, bf16, q8_0 or q4_0; FOLDER: max_shard_size=5GB (default), "
             "name= the card's title (default: run and stage, e.g. quickstart-finetune)"),
    out: Path = typer.Option(..., "--out", help="a .gguf file to write, or else a Hugging Face folder"),
    force: bool = typer.Option(False, "--force", help="replace a .gguf file, or redo a folder pmcllama wrote "
                               "(a folder of yours gets the files beside its own, none removed or overwritten)"),
) -> None:
    """Export a LLaMA-family model as one GGUF file that llama.cpp (and `pmcllama serve`) runs,
    or as a Hugging Face folder (safetensors shards, tokenizer, README.md model card written from
    the stage manifests). A LoRA adapter folder alone is refused with the command to merge it.

    \b
    pmcllama export runs/quickstart/finetune --out model.gguf dtype=q8_0
    pmcllama serve model.gguf
    pmcllama export runs/quickstart/finetune --out runs/card max_shard_size=2GB
    """
    def go():
        gguf_out = out.suffix == ".gguf"
        allowed = {"dtype": "f32"} if gguf_out else {"max_shard_size": "5GB", "name": None}
        settings = {k: v for k, v in allowed.items() if v is not None}
        for opt in options or []:
            key, eq, value = opt.partition("=")
            if not eq or key not in allowed:
                raise UserError(f"unknown option {opt!r}: export to {'a .gguf file' if gguf_out else 'a folder'} "
                                f"takes {' '.join(k + '=' for k in allowed)}"
                                + ("" if gguf_out else " (dtype= is for .gguf outputs)"))
            settings[key] = value
        if gguf_out:
            from pmcllama.export import export_gguf

            export_gguf(model, out, settings["dtype"], force, say=typer.echo)
        else:
            from pmcllama.config import build_config
            from pmcllama.export_hf import FolderExportConfig, export_folder

            export_folder(build_config(FolderExportConfig, {"model": model, "out": str(out), **settings}), force,
                          say=typer.echo)

    guarded(go)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks for errors")) -> None:
    if debug:
        _state["debug"] = True


def main() -> None:
    app()


if __name__ == "__main__":
    main()
