"""Ablation arms (the paper's Table 1): task fine-tuning of several model states in one recipe,
each arm paired with its twin in the report, and the bad inputs refused before any training."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pmcllama.ablation import ArmConfig, arm_finetune, check_held_out, twins
from pmcllama.config import build_config
from pmcllama.errors import ConfigError, UserError
from pmcllama.plots import plot_accuracy_bars, smooth_ema
from pmcllama.report import discover, make_report
from pmcllama.run import RecipeConfig, held_out
from pmcllama.training.config import FinetuneConfig

QUESTIONS = [
    ("Which vitamin deficiency causes scurvy in sailors on long voyages without fruit in a typical adult patient seen in clinic?", "Vitamin C"),
    ("Which organ secretes insulin from the beta cells of the islets of Langerhans in a typical adult patient seen in clinic?", "Pancreas"),
    ("Which bacterium is the usual cause of peptic ulcers of the stomach and duodenum in a typical adult patient seen in clinic?", "Helicobacter pylori"),
    ("Which electrolyte is most often low in patients taking loop diuretics for heart failure in a typical adult patient seen in clinic?", "Potassium"),
    ("Which imaging test is first line for suspected gallstones in the right upper quadrant in a typical adult patient seen in clinic?", "Ultrasound"),
    ("Which drug reverses an overdose of opioids in the emergency department quickly in a typical adult patient seen in clinic?", "Naloxone"),
    ("Which nerve is compressed in carpal tunnel syndrome at the wrist of typists in a typical adult patient seen in clinic?", "Median nerve"),
    ("Which hormone is deficient in type 1 diabetes mellitus in young children in a typical adult patient seen in clinic?", "Insulin"),
]
WRONG = ["Vitamin D", "Liver", "Escherichia coli", "Sodium", "Computed tomography", "Atropine",
         "Ulnar nerve", "Glucagon"]


def medqa_rows(pairs):
    rows = []
    for k, (q, a) in enumerate(pairs):
        opts = [a, WRONG[k], WRONG[(k + 1) % len(WRONG)], WRONG[(k + 2) % len(WRONG)]]
        rows.append({"question": q, "options": dict(zip("ABCD", opts)), "answer": a, "answer_idx": "A",
                     "meta_info": "step1"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pmcllama(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pmcllama", *map(str, args)], capture_output=True,
                          text=True, timeout=900, cwd=cwd)


def recipe(tmp: Path, **extra) -> dict:
    """A tiny-llama recipe: a small HPO corpus, knowledge injection, four task fine-tuning arms on
    a MedQA-format training file, evaluated on a separate MedQA-format file."""
    train = write_jsonl(tmp / "medqa_train.jsonl", medqa_rows(QUESTIONS[:6]))
    test = write_jsonl(tmp / "medqa_test.jsonl", medqa_rows(QUESTIONS[5:]))  # shares question 6 with train
    lora = {"lora": {"rank": 4, "alpha": 8}}
    data = {
        "name": "ablation-test", "out_dir": str(tmp / "run"), "base_model": "tiny-llama",
        "corpus": {"sources": [{"name": "hpo", "paths": ["hpo"], "format": "obo", "obo_root": "HP:0001626",
                                "limit": 20}]},
        "pretrain": {"seq_len": 64, "micro_batch": 4, "global_batch": 4, "lr": 1e-3, "epochs": 1},
        "ablation": {
            "instructions": {"sources": [{"name": "medqa", "format": "medqa", "paths": [str(train)]}],
                             "val_fraction": 0},
            "finetune": {"seq_len": 256, "micro_batch": 4, "global_batch": 4, "lr": 1e-3, "max_steps": 2},
            "arms": [{"name": "llama_full", "start": "base"}, {"name": "pmc_full", "start": "pretrain"},
                     {"name": "llama_lora", "start": "base", "finetune": lora},
                     {"name": "pmc_lora", "start": "pretrain", "finetune": lora}],
            "modes": ["loglik", "generate"], "ema": 0.5, "max_new_tokens": 4},
        "evaluate": {"batch_size": 4, "bootstrap": 50,
                     "benchmarks": [{"name": "medqa", "format": "medqa", "path": str(test)}]},
        "probe": None,
    }
    data.update(extra)
    return data


def write_recipe(tmp: Path, data: dict) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.slow
def test_arms_train_from_their_states_and_pair_with_their_twins(tmp_path):
    path = write_recipe(tmp_path, recipe(tmp_path))
    proc = pmcllama("run", path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    starts = {arm: json.loads((run / "ablation" / arm / "manifest.json").read_text())["config"]["model"]
              for arm in ("llama_full", "pmc_full", "llama_lora", "pmc_lora")}
    assert starts["llama_full"] == starts["llama_lora"] == "tiny-llama"
    assert starts["pmc_full"] == starts["pmc_lora"] == str(run / "pretrain")
    lora = json.loads((run / "ablation" / "pmc_lora" / "manifest.json").read_text())["config"]["lora"]
    assert lora["rank"] == 4 and json.loads((run / "ablation" / "pmc_full" / "manifest.json").read_text())[
        "config"]["lora"] is None
    # the task set was decontaminated against the evaluation file: question 6 is in both
    task = json.loads((run / "ablation" / "instructions" / "manifest.json").read_text())
    assert task["counts"]["decontaminated"] == 1 and task["counts"]["train"] == 5
    results = json.loads((run / "results.json").read_text())
    assert list(results["results"]) == ["base", "knowledge-injected", "llama_full", "pmc_full", "llama_lora",
                                        "pmc_lora", "llama_full.generate", "pmc_full.generate",
                                        "llama_lora.generate", "pmc_lora.generate"]
    assert results["pairs"] == [["knowledge-injected", "base"], ["pmc_full", "llama_full"],
                                ["pmc_full.generate", "llama_full.generate"], ["pmc_lora", "llama_lora"],
                                ["pmc_lora.generate", "llama_lora.generate"]]
    gen = json.loads((run / "eval" / "pmc_full.generate" / "results.json").read_text())["medqa"]
    assert gen["mode"] == "generate" and "unparsable" in gen
    report = (run / "report.md").read_text()
    assert "| medqa | run/pmc_full vs run/llama_full | 3 |" in report
    assert "| medqa | run/knowledge-injected vs run/base | 3 |" in report
    assert "run/pmc_full vs run/llama_full" in proc.stdout  # printed as well
    for png in ("ablation_loss.png", "results.png", "report.png", "loss_curves.png"):
        assert (run / png).stat().st_size > 5000, png
    # a rerun trains and scores nothing again
    outputs = [*run.glob("ablation/*/model.safetensors"), *run.glob("eval/*/results.json")]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    assert len(before) == 4 + 10
    again = pmcllama("run", path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def arms(*specs) -> list[ArmConfig]:
    return [ArmConfig(**s) for s in specs]


def test_twins_pair_each_arm_with_the_control_of_the_same_settings():
    lora = {"lora": {"rank": 8}}
    got = twins(arms({"name": "lf", "start": "base"}, {"name": "pf", "start": "pretrain"},
                     {"name": "ll", "start": "base", "finetune": lora},
                     {"name": "pl", "start": "pretrain", "finetune": lora},
                     {"name": "it", "start": "finetune", "finetune": {"lr": 1e-3}},
                     {"name": "px", "start": "pretrain", "finetune": {"lr": 1e-3}, "twin": "lf"}))
    assert got == {"pf": "lf", "pl": "ll", "px": "lf"}  # 'it' has no control with lr 1e-3


def test_an_arm_overrides_the_shared_settings_deeply():
    shared = FinetuneConfig(lr=2e-5, epochs=3, lora={"rank": 8, "alpha": 16})
    f = arm_finetune(shared, ArmConfig(name="a", start="base", finetune={"lora": {"rank": 2}, "max_steps": 5}))
    assert (f.lr, f.epochs, f.max_steps, f.lora.rank, f.lora.alpha) == (2e-5, 3, 5, 2, 16)
    with pytest.raises(ConfigError, match="lorra"):
        arm_finetune(shared, ArmConfig(name="a", start="base", finetune={"lorra": {}}))
    with pytest.raises(ConfigError, match="finetune.model is filled in by the recipe runner"):
        arm_finetune(shared, ArmConfig(name="a", start="base", finetune={"model": "x"}))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("pretrain"), "arm 'pmc_full' starts from pretrain, but the recipe has no pretrain section"),
    (lambda d: d["ablation"]["arms"].append({"name": "pmc_full", "start": "base"}), "repeated: pmc_full"),
    (lambda d: d["ablation"]["arms"].append({"name": "base", "start": "base"}), "'base' is a model state's label"),
    (lambda d: d["ablation"]["arms"][1].update(twin="nobody"), "twin 'nobody' is not an arm"),
    (lambda d: d["ablation"]["arms"][2].update(finetune={"lora": {"rank": 0}}), "arm 'llama_lora' finetune"),
    (lambda d: d["ablation"].pop("instructions"), "need a task fine-tuning set"),
    (lambda d: d["ablation"]["finetune"].update(data="x"), "ablation.finetune.data is filled in"),
])
def test_bad_arms_are_refused_with_the_reason(tmp_path, change, message):
    data = recipe(tmp_path)
    change(data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        build_config(RecipeConfig, data)


def test_bad_recipes_stop_before_any_work_in_one_line(tmp_path):
    data = recipe(tmp_path)
    train = data["ablation"]["instructions"]["sources"][0]["paths"][0]
    data["evaluate"]["benchmarks"].append({"name": "leak", "format": "medqa", "path": train})
    proc = pmcllama("run", write_recipe(tmp_path, data))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "benchmark 'leak'" in proc.stderr and "training data of ablation.instructions source 'medqa'" in proc.stderr
    assert not (tmp_path / "run").exists()
    data = recipe(tmp_path)
    del data["corpus"], data["pretrain"]
    data["ablation"]["arms"] = [{"name": "a", "start": "base"}]
    rows = medqa_rows(QUESTIONS[5:])  # the training set is the evaluation set, renamed and reordered
    train = write_jsonl(tmp_path / "copy.jsonl", rows[::-1])
    data["ablation"]["instructions"]["sources"][0]["paths"] = [str(train)]
    proc = pmcllama("run", write_recipe(tmp_path, data))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "decontamination dropped all its 3 records" in proc.stderr
    assert not list((tmp_path / "run").glob("ablation/*/model.safetensors"))


def test_an_evaluation_file_copied_into_a_training_folder_is_refused(tmp_path):
    (tmp_path / "eval.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "copy.jsonl").write_text('{"question": "q"}\n')
    check_held_out({"b": str(tmp_path / "eval.jsonl")}, {"s": [str(tmp_path / "train" / "other.jsonl")]})
    with pytest.raises(ConfigError, match=r"benchmark 'b' evaluates .*eval.jsonl, which is also training data of s"):
        check_held_out({"b": str(tmp_path / "eval.jsonl")}, {"s": [str(tmp_path / "train" / "copy.jsonl")]})
    with pytest.raises(ConfigError, match="training data of s"):  # inside a training folder
        check_held_out({"b": str(tmp_path / "train" / "copy.jsonl")}, {"s": [str(tmp_path / "train")]})


def test_instruction_sets_are_decontaminated_against_the_evaluation_files(tmp_path):
    data = recipe(tmp_path)
    cfg = build_config(RecipeConfig, data)
    test = data["evaluate"]["benchmarks"][0]["path"]
    task = held_out(cfg, cfg.ablation.instructions)
    assert task.decontaminate == [f"medqa:{test}"]
    again = held_out(cfg, task.model_copy(update={"decontaminate": [test]}))  # already listed: not twice
    assert again.decontaminate == [test]


def test_twin_pairs_recorded_by_a_run_drive_the_report(tmp_path):
    from test_report import fake_eval

    run = tmp_path / "abl"
    a, b = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0, 1, 0]
    for name, correct in (("base", a), ("llama_full", a), ("pmc_full", b)):
        fake_eval(run / "eval" / name, name, {"bq": (correct, [0.2, 0.8])})
    (run / "results.json").write_text(json.dumps({"states": {"base": "x", "llama_full": "y", "pmc_full": "z"},
                                                  "pairs": [["pmc_full", "llama_full"]]}))
    text = make_report([run], tmp_path / "r", n_boot=50)
    assert "Paired comparison against abl/llama_full" in text
    assert "| bq | abl/pmc_full | 10 | +30.0 |" in text and "abl/llama_full | 10" not in text
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [(c["model"], c["against"]) for c in rep["comparisons"]["bq"]] == [("abl/pmc_full", "abl/llama_full")]
    assert [r.label for r in discover([run])] == ["abl/base", "abl/llama_full", "abl/pmc_full"]


def test_ema_smoothing_and_baselines_on_the_chart(tmp_path):
    assert smooth_ema([1.0, 3.0], 0.0) == [1.0, 3.0]
    assert smooth_ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected
    assert smooth_ema([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])
    import matplotlib.pyplot as plt

    row = {"acc": 0.3, "acc_ci95": [0.2, 0.4], "baselines": {"majority": 0.6, "constant_choice": {"max": 0.45}}}
    plot_accuracy_bars({"m1": {"b": row}, "m2": {"b": row}}, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 5000
    from pmcllama import plots

    fig, ax = plt.subplots()
    plots._baselines(ax, {"m1": {"b": row}}, ["b"], 0.8)
    lines = sorted(seg[0][1] for c in ax.collections for seg in c.get_segments())
    assert lines == pytest.approx([45.0, 60.0])
    assert sorted(c.get_label() for c in ax.collections) == ["best constant choice", "majority class"]
    plt.close(fig)


def test_an_arms_settings_run_alone_through_a_dotted_section():
    from pmcllama.config import load_config

    root = Path(__file__).resolve().parents[1]
    f = load_config(FinetuneConfig, root / "recipes" / "paper-v1.yaml", section="ablation.finetune")
    assert (f.lr, f.epochs, f.template, f.distributed) == (2e-5, 3, "alpaca", "fsdp")
    with pytest.raises(UserError, match="no section 'ablation.tune'"):
        load_config(FinetuneConfig, root / "recipes" / "paper-v1.yaml", section="ablation.tune")


@pytest.mark.parametrize("name", ["model-q8_0.gguf", "card", "ablation_loss.png"])
def test_force_into_a_users_folder_never_takes_a_file_a_run_would_write(tmp_path, name):
    from pmcllama.errors import UserError
    from pmcllama.run import claim_run_folder

    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("the user's") if "." in name else (out / name).mkdir()
    with pytest.raises(UserError, match=f"out_dir holds {name}, which pmcllama did not write"):
        claim_run_folder(out, force=True)
    assert not (out / ".pmcllama-run").exists()
