"""Typed configs: YAML + overrides, unknown keys with suggestions, wrong types named."""
from __future__ import annotations

from pathlib import Path

import subprocess
import sys

import pytest

from pmcllama.config import describe, load_config
from pmcllama.errors import ConfigError, UserError
from pmcllama.run import RecipeConfig
from pmcllama.training.config import FinetuneConfig, PretrainConfig


def test_yaml_plus_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: d\nout: o\nlr: 1.0e-4\nlora: {rank: 4}\n")
    cfg = load_config(FinetuneConfig, f, ["lr=3e-5", "lora.targets=[q_proj,k_proj]", "max_steps=7"])
    assert cfg.lr == 3e-5 and cfg.max_steps == 7
    assert cfg.lora.rank == 4 and cfg.lora.targets == ["q_proj", "k_proj"]


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate'|unknown config key 'lrr'"):
        load_config(PretrainConfig, None, ["lrr=1"])
    with pytest.raises(ConfigError, match=r"'lora.rnak'; did you mean 'lora.rank'"):
        load_config(PretrainConfig, None, ["lora.rnak=4"])
    with pytest.raises(ConfigError, match=r"'pretrain.seq_lenn'; did you mean 'pretrain.seq_len'"):
        load_config(RecipeConfig, None, ["pretrain.seq_lenn=5", "pretrain.data=x"])


@pytest.mark.parametrize("cls, override, message", [
    (FinetuneConfig, "warmup_steps=5", r"'warmup_steps'; did you mean 'optimizer.warmup_steps'"),
    (RecipeConfig, "finetune.weight_decay=0.1", r"'finetune.weight_decay'; did you mean 'finetune.optimizer.weight_decay'"),
    (FinetuneConfig, "optimizer.betas=[0.9, 1.5]", r"optimizer.betas' = \[0.9, 1.5\]: .*betas must each be in \[0, 1\)"),
])
def test_a_key_that_lives_in_a_section_is_named_with_it(cls, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, [override])


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"config key 'lr' = 'fast'"):
        load_config(PretrainConfig, None, ["lr=fast"])
    with pytest.raises(ConfigError, match=r"global_batch \(10\) must be a multiple of micro_batch \(4\)"):
        load_config(PretrainConfig, None, ["global_batch=10", "micro_batch=4"])
    with pytest.raises(ConfigError, match=r"weight of source 'books' must be > 0"):
        load_config(PretrainConfig, None, ["weights={books: 0}"])


def test_bad_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data: x\nlr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(PretrainConfig, f)
    with pytest.raises(UserError, match="config file not found"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")


def test_describe_lists_every_key_with_its_description():
    lines = describe(FinetuneConfig)
    assert any(l.startswith("lr (float = 2e-05): peak learning rate") for l in lines)
    assert any(l.startswith("lora.rank (int = 8): LoRA rank") for l in lines)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pmcllama", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_lists_the_pipeline_in_order():
    out = _cli("--help").stdout
    order = [out.index(f"  {c} ") for c in ("corpus", "pretrain", "instructions", "finetune", "evaluate",
                                            "generate", "run", "models")]
    assert order == sorted(order)
    stage_help = _cli("pretrain", "--help").stdout
    assert "seq_len (int = 512): tokens per training sequence" in stage_help
    assert "optimizer.betas (tuple[float, float] = (0.9, 0.95)): AdamW beta1, beta2" in stage_help
    assert "optimizer.decay (cosine|linear|constant = 'cosine'): after warmup" in stage_help
    assert "--config" in stage_help and "--force" in stage_help


def test_cli_user_errors_exit_2_with_one_line():
    p = _cli("pretrain", "lrr=1")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "did you mean 'lr'" in p.stderr
    assert "Traceback" not in p.stderr
    p = _cli("pretrain", "data=/nonexistent/corpus")
    assert p.returncode == 2 and "/nonexistent/corpus" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--debug", "pretrain", "data=/nonexistent/corpus")
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_recipe_stage_without_its_input_section_is_an_error(tmp_path):
    from pmcllama import run as recipe

    cfg = load_config(RecipeConfig, None, [f"out_dir={tmp_path}", "pretrain.seq_len=64"])
    with pytest.raises(ConfigError, match="pretrain section needs a corpus section"):
        recipe.run(cfg)


def test_a_recipe_section_runs_as_a_stage_config(tmp_path):
    from pmcllama.training.config import PretrainConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "paper-13b.yaml"
    cfg = load_config(PretrainConfig, recipe, ["data=runs/c", "max_steps=3"], section="pretrain")
    assert (cfg.seq_len, cfg.global_batch, cfg.distributed, cfg.doc_mask) == (2048, 320, "fsdp", True)
    assert (cfg.data, cfg.max_steps) == ("runs/c", 3)
    with pytest.raises(UserError, match="no section 'pretrian'.*corpus, pretrain, instructions, finetune, evaluate"):
        load_config(PretrainConfig, recipe, section="pretrian")


def test_section_via_the_cli_names_the_section_in_errors(tmp_path):
    from typer.testing import CliRunner

    from pmcllama.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain: {seq_len: 64, lrr: 1}\nfinetune: {lr: fast}\n")
    res = CliRunner().invoke(app, ["pretrain", "--config", str(recipe), "--section", "pretrain"])
    assert res.exit_code == 2 and "did you mean 'lr'" in res.output
    res = CliRunner().invoke(app, ["finetune", "--config", str(recipe), "--section", "finetune"])
    assert res.exit_code == 2 and f"{recipe} [finetune]" in res.output and "'lr' = 'fast'" in res.output


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_section_is_its_stage_config(recipe):
    import importlib

    import yaml

    from pmcllama.cli import STAGES
    from pmcllama.run import LINKS

    whole = load_config(RecipeConfig, recipe)
    data = yaml.safe_load(recipe.read_text())
    sections = [k for k, v in data.items() if isinstance(v, dict) and k != "ablation"]
    sections += [f"ablation.{k}" for k, v in (data.get("ablation") or {}).items() if isinstance(v, dict)]
    recipe_only = {"probe", "export", "judge"}  # sections of the recipe runner, not of one stage
    assert set(sections) <= set(LINKS) | recipe_only, sections
    for name in sections:
        if name in recipe_only:
            continue
        module, cls_name, _ = STAGES[name.split(".")[-1]]
        cls = getattr(importlib.import_module(module), cls_name)
        alone = load_config(cls, recipe, section=name)
        assert type(alone) is type(whole.section(name)) and alone == whole.section(name)


def test_a_recipe_section_may_not_set_what_the_runner_links(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain.out is filled in by the recipe runner"):
        load_config(RecipeConfig, None, ["pretrain.out=elsewhere"])
    with pytest.raises(ConfigError, match=r"evaluate.model is filled in by the recipe runner"):
        load_config(RecipeConfig, None, ["evaluate.model=tiny-llama"])
    cfg = load_config(RecipeConfig, None, ["evaluate.temperature=0.7", "evaluate.mode=cot",
                                           "evaluate.self_consistency=5", "probe=null"])
    assert (cfg.evaluate.temperature, cfg.evaluate.self_consistency, cfg.probe) == (0.7, 5, None)
    assert cfg.generate.max_new_tokens == 64  # the generate stage's own default
    from pmcllama.run import LINKED_KEYS

    keys = {line.split(" ", 1)[0] for line in describe(RecipeConfig, omit=LINKED_KEYS)}  # run --help
    assert {"pretrain.seq_len", "evaluate.temperature", "probe.choices", "instructions.tokenizer"} <= keys
    assert not keys & {"pretrain.out", "pretrain.data", "corpus.tokenizer", "evaluate.model", "generate.stream"}


def test_the_quickstart_evaluate_section_runs_alone_until_it_needs_benchmarks():
    from typer.testing import CliRunner

    from pmcllama.cli import app

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    res = CliRunner().invoke(app, ["evaluate", "--config", str(recipe), "--section", "evaluate"])
    assert res.exit_code == 2 and "no benchmarks to score" in res.output


def test_the_readme_slurm_job_passes_the_batch_check_for_its_world_size():
    import importlib
    import re
    import shlex

    from pmcllama.cli import STAGES
    from pmcllama.training.distributed import Dist
    from pmcllama.training.loop import check_batch

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    job = next(b for b in readme.split("```") if "#SBATCH" in b)
    nodes = int(re.search(r"#SBATCH .*--nodes=(\d+)", job).group(1))
    per_node = int(re.search(r"--nproc_per_node (\d+)", job).group(1))
    words = shlex.split(job[job.index("-m pmcllama"):].replace("\\\n", " "))
    stage, config, section, overrides = words[2], words[4], words[6], words[7:]
    assert (words[3], words[5]) == ("--config", "--section")
    module, cls_name, _ = STAGES[stage]
    cfg = load_config(getattr(importlib.import_module(module), cls_name), root / config, overrides, section=section)
    world = Dist(world=nodes * per_node)
    assert world.world == 32
    check_batch(cfg, world)  # raises a UserError when global_batch is not micro_batch x processes x k
    with pytest.raises(UserError, match="not a multiple of micro_batch 4 x 32 processes"):
        check_batch(cfg.model_copy(update={"micro_batch": 4}), world)
