"""A user's files are never lost and bad input never shows a traceback (issue 11).

The stage contract first (what `run_stage` may replace), then a sweep that feeds every command
each kind of bad input and checks the one-line error, then one test per defect found."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pmcllama.cli import app
from pmcllama.config import Config
from pmcllama.errors import UserError
from pmcllama.stage import StageResult, read_manifest, run_stage


class Cfg(Config):
    x: int = 1


def _work(calls, names=("artifact.txt",)):
    def work(tmp):
        calls.append(tmp)
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(f"run {len(calls)}")
        return StageResult(counts={"n": 1})
    return work


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the stage contract


def test_a_foreign_folder_is_refused_before_any_work(tmp_path):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "notes.txt").write_text("notes")
    calls = []
    with pytest.raises(UserError, match="not write.*--force"):
        run_stage("demo", Cfg(), user, [], _work(calls), log=lambda m: None)
    assert calls == [] and snapshot(user) == {"notes.txt": b"notes"}
    assert not (tmp_path / "userdir.partial").exists() and not (tmp_path / "userdir.old").exists()


def test_force_adds_outputs_beside_the_users_files_and_reruns_replace_only_ours(tmp_path):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "notes.txt").write_text("notes")
    calls = []
    run_stage("demo", Cfg(), user, [], _work(calls, ("a.txt", "sub/b.txt")), force=True, log=lambda m: None)
    assert snapshot(user)["notes.txt"] == b"notes" and snapshot(user)["sub/b.txt"] == b"run 1"
    assert read_manifest(user)["outputs"] == ["a.txt", "config.yaml", "manifest.json", "sub/b.txt"]
    logs = []  # a changed config redoes it, says so, and removes only what the first run wrote
    run_stage("demo", Cfg(x=2), user, [], _work(calls, ("c.txt",)), log=logs.append)
    assert set(snapshot(user)) == {"notes.txt", "c.txt", "config.yaml", "manifest.json"}
    assert snapshot(user)["notes.txt"] == b"notes" and not (user / "sub").exists()
    assert any("other settings (changed: x)" in m for m in logs)


def test_a_file_the_user_put_into_an_output_folder_survives_a_redo(tmp_path):
    calls = []
    out = run_stage("demo", Cfg(), tmp_path / "out", [], _work(calls), log=lambda m: None)
    (out / "my-notes.md").write_text("mine")
    run_stage("demo", Cfg(x=3), out, [], _work(calls), log=lambda m: None)
    assert (out / "my-notes.md").read_text() == "mine" and (out / "artifact.txt").read_text() == "run 2"
    assert len(calls) == 2


def test_a_users_file_with_an_output_name_is_never_overwritten(tmp_path):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "artifact.txt").write_text("the user's")
    with pytest.raises(UserError, match="would overwrite artifact.txt"):
        run_stage("demo", Cfg(), user, [], _work([]), force=True, log=lambda m: None)
    assert (user / "artifact.txt").read_text() == "the user's"


def test_an_output_that_is_a_file_is_refused_and_left_alone(tmp_path):
    f = tmp_path / "results"
    f.write_text("data")
    for _ in range(2):  # and the next run says the same, nothing renamed in between
        with pytest.raises(UserError, match="existing file"):
            run_stage("demo", Cfg(), f, [], _work([]), force=True, log=lambda m: None)
    assert snapshot(tmp_path) == {"results": b"data"}


def test_the_users_old_and_partial_folders_beside_out_are_not_touched(tmp_path):
    calls = []
    run_stage("demo", Cfg(), tmp_path / "out", [], _work(calls), log=lambda m: None)
    (tmp_path / "out.old").mkdir()
    (tmp_path / "out.old" / "keep.txt").write_text("k")
    run_stage("demo", Cfg(x=2), tmp_path / "out", [], _work(calls), log=lambda m: None)
    assert (tmp_path / "out.old" / "keep.txt").read_text() == "k"
    (tmp_path / "other.partial").mkdir()
    (tmp_path / "other.partial" / "draft.txt").write_text("d")
    with pytest.raises(UserError, match="did not write"):
        run_stage("demo", Cfg(), tmp_path / "other", [], _work(calls), log=lambda m: None)
    assert (tmp_path / "other.partial" / "draft.txt").read_text() == "d"


def test_dot_and_dotdot_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("m")
    with pytest.raises(UserError, match="did not write"):
        run_stage("demo", Cfg(), ".", [], _work([]), log=lambda m: None)
    (tmp_path / "a" / "b").mkdir(parents=True)  # a holds b: a folder of the user's
    with pytest.raises(UserError, match="did not write"):
        run_stage("demo", Cfg(), "a/b/..", [], _work([]), log=lambda m: None)
    assert snapshot(tmp_path) == {"mine.txt": b"m"} and list((tmp_path / "a").iterdir()) == [tmp_path / "a" / "b"]
    out = run_stage("demo", Cfg(), "c/d/..", [], _work([]), log=lambda m: None)
    assert (tmp_path / "c" / "manifest.json").is_file() and Path(out) == Path("c/d/..")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["artifact.txt", "config.yaml", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c", "mine.txt"]


# ----------------------------------------------------------------------------- the CLI sweep


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(res, *names: str | Path) -> str:
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.stdout, err, res.exception)
    assert "Traceback" not in res.stdout + err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for name in names:
        assert str(name) in err, (name, err)
    return err


def bad_files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (root / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"text": "hello there"}\n' * 300)[:70])
    (root / "empty.jsonl").write_bytes(b"")
    (root / "folder.jsonl").mkdir(exist_ok=True)
    return {"non_utf8": root / "latin1.jsonl", "truncated_gzip": root / "cut.jsonl.gz",
            "empty": root / "empty.jsonl", "folder_for_file": root / "folder.jsonl"}


def command_with_input(stage: str, f: Path, out: Path) -> list[str]:
    """`stage` given `f` where it reads a file the user names."""
    return {
        "corpus": ["corpus", f"out={out}", "tokenizer=tiny-llama", f"sources=[{{name: a, paths: [{f}], format: jsonl}}]"],
        "pretrain": ["pretrain", "model=tiny-llama", f"data={f}", f"out={out}"],
        "instructions": ["instructions", f"out={out}", f"sources=[{{name: a, format: alpaca, paths: [{f}]}}]"],
        "finetune": ["finetune", "model=tiny-llama", f"data={f}", f"out={out}"],
        "evaluate": ["evaluate", "model=tiny-llama", f"out={out}", f"benchmarks=[{{name: b, format: medqa, path: {f}}}]"],
        "generate": ["generate", "model=tiny-llama", f"prompts_file={f}", "max_new_tokens=2"],
        "run": ["run", str(f)],
        "config": ["instructions", "--config", str(f)],
        "report": ["report", str(f), "--out", str(out)],
        "plot": ["plot", str(f), "--out", str(out / "p.png")],
        "models": ["models", str(f)],
    }[stage]


SWEPT = ("corpus", "pretrain", "instructions", "finetune", "evaluate", "generate", "run", "config",
         "report", "plot", "models")


@pytest.mark.parametrize("stage", SWEPT)
def test_sweep_bad_input_files(stage, tmp_path):
    files = bad_files(tmp_path / "in")
    before = snapshot(tmp_path)
    for kind, f in files.items():
        res = cli(*command_with_input(stage, f, tmp_path / "out"))
        assert_one_line_error(res, f)
        assert snapshot(tmp_path / "in") == before_in(before), kind
        assert not (tmp_path / "out").exists()  # (a resumable stage may keep its own out.partial)
        assert {p.name for p in tmp_path.iterdir()} <= {"in", "out.partial"}


def before_in(before: dict[str, bytes]) -> dict[str, bytes]:
    return {k.removeprefix("in/"): v for k, v in before.items() if k.startswith("in/")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, corpus, instructions):
    """Valid inputs for every command (so only the output is at fault)."""
    root = tmp_path_factory.mktemp("valid")
    (root / "books.txt").write_text("The heart pumps blood through the arteries and veins. " * 4)
    (root / "alpaca.jsonl").write_text(json.dumps({"instruction": "What is insulin?", "output": "A hormone."}) + "\n")
    mcq = {"question": "Which organ makes insulin?", "options": {"A": "liver", "B": "pancreas"},
           "answer_idx": "B", "answer": "pancreas"}
    (root / "mcq.jsonl").write_text(json.dumps(mcq) + "\n")
    (root / "recipe.yaml").write_text("name: t\nbase_model: tiny-llama\ngenerate: {prompts: [Hello]}\n")
    res = cli("evaluate", "model=tiny-llama", f"out={root / 'eval'}",
              f"benchmarks=[{{name: b, format: medqa, path: {root / 'mcq.jsonl'}}}]")
    assert res.exit_code == 0, res.stderr
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text(json.dumps({"step": 1, "tokens": 8, "loss": 2.5}) + "\n")
    return {"root": root, "corpus": corpus, "instructions": instructions}


def command_with_output(stage: str, v: dict, out: Path) -> list[str]:
    root = v["root"]
    return {
        "corpus": ["corpus", f"out={out}", "tokenizer=tiny-llama", f"sources=[{{name: a, paths: [{root / 'books.txt'}]}}]"],
        "pretrain": ["pretrain", "model=tiny-llama", f"data={v['corpus']}", f"out={out}", "max_steps=1"],
        "instructions": ["instructions", f"out={out}", f"sources=[{{name: a, format: alpaca, paths: [{root / 'alpaca.jsonl'}]}}]"],
        "finetune": ["finetune", "model=tiny-llama", f"data={v['instructions']}", f"out={out}", "max_steps=1"],
        "evaluate": ["evaluate", "model=tiny-llama", f"out={out}", f"benchmarks=[{{name: b, format: medqa, path: {root / 'mcq.jsonl'}}}]"],
        "generate": ["generate", "model=tiny-llama", "Hello", f"out={out}", "max_new_tokens=2"],
        "run": ["run", str(root / "recipe.yaml"), f"out_dir={out}"],
        "report": ["report", str(root / "eval"), "--out", str(out)],
        "plot": ["plot", str(root / "run"), "--out", str(out / "p.png")],
    }[stage]


WRITERS = ("corpus", "pretrain", "instructions", "finetune", "evaluate", "generate", "run", "report", "plot")


@pytest.mark.parametrize("stage", WRITERS)
def test_sweep_outputs_that_must_not_be_written(stage, inputs, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "notes.txt").write_text("notes")
    before = snapshot(tmp_path)
    res = cli(*command_with_output(stage, inputs, blocker / "out"))  # below a regular file: unwritable
    assert_one_line_error(res, blocker)
    if stage not in ("report", "plot"):  # these add named files to a folder, stages own theirs
        res = cli(*command_with_output(stage, inputs, user))
        assert "did not write" in assert_one_line_error(res, user)
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "userdir"]


def test_unwritable_output_folders_without_root_powers(inputs, tmp_path):
    """A read-only folder as a user without CAP_DAC_OVERRIDE sees it (root ignores modes)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is absent: cannot drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for stage in ("instructions", "report", "plot"):
        args = command_with_output(stage, inputs, ro / "out")
        proc = subprocess.run(prefix + [sys.executable, "-m", "pmcllama", *args], capture_output=True,
                              text=True, timeout=300, env=env)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and "Traceback" not in err, (stage, proc.stderr)
        assert err.splitlines()[-1].startswith("error: ") and str(ro) in err and "ermission denied" in err
    assert list(ro.iterdir()) == []


# ----------------------------------------------------------------------------- one test per defect


def test_generate_out_refuses_a_foreign_folder(tmp_path):
    user = tmp_path / "u"
    user.mkdir()
    (user / "notes.txt").write_text("n")
    assert_one_line_error(cli("generate", "model=tiny-llama", "Hi", f"out={user}", "max_new_tokens=2"), user)
    assert snapshot(user) == {"notes.txt": b"n"}


def test_bad_bytes_are_named_by_line_and_column(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"first prompt\nsecond \xff prompt\n")
    err = assert_one_line_error(cli("generate", "model=tiny-llama", f"prompts_file={f}"), f"{f}:2")
    assert "column 8" in err and "0xff" in err and "byte 6571" not in err
    gz = tmp_path / "cfg.yaml"
    gz.write_bytes(gzip.compress(b"out: x\n"))
    assert "gzip" in assert_one_line_error(cli("instructions", "--config", str(gz)), gz)


def test_skip_policy_sets_a_non_utf8_line_aside(tmp_path):
    f = tmp_path / "a.jsonl"
    rows = [json.dumps({"instruction": f"Q{i}?", "output": f"A{i}."}).encode() for i in range(4)]
    rows[2] = b'{"instruction": "caf\xe9?", "output": "x"}'
    f.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "out"
    res = cli("instructions", f"out={out}", "on_error=skip", f"sources=[{{name: a, format: alpaca, paths: [{f}]}}]")
    assert res.exit_code == 0, res.stderr
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"][:17]) for r in rejected] == [(3, "not UTF-8 text (c")]
    assert "\ufffd" in rejected[0]["record"]
    assert json.loads((out / "stats.json").read_text())["sources"]["a"]["records"] == 3
    assert_one_line_error(cli("instructions", f"out={tmp_path / 'o2'}",
                              f"sources=[{{name: a, format: alpaca, paths: [{f}]}}]"), f"{f}:3")


def _eval_folder(root: Path, entry: dict) -> Path:
    folder = root / "ev"
    (folder / "predictions").mkdir(parents=True)
    (folder / "predictions" / "b.jsonl").write_text(json.dumps({"id": "1", "correct": 1}) + "\n")
    (folder / "results.json").write_text(json.dumps({"model": "m", "b": entry}))
    return folder


def test_report_refuses_results_without_accuracy_before_writing(tmp_path):
    folder = _eval_folder(tmp_path, {"n": 1})
    err = assert_one_line_error(cli("report", str(folder), "--out", str(tmp_path / "rep")), folder / "results.json")
    assert "'acc'" in err and not (tmp_path / "rep").exists()
    (folder / "results.json").write_bytes(b'{"model": "m\xff"}')
    assert_one_line_error(cli("report", str(folder), "--out", str(tmp_path / "rep")), folder / "results.json")


def test_plot_reads_a_killed_runs_metrics(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text(json.dumps({"step": 1, "tokens": 10, "loss": 3.0}) + "\n"
                 + json.dumps({"step": 2, "tokens": 20, "loss": 2.0}) + "\n" + '{"step": 3, "tok')
    res = cli("plot", str(m), "--out", str(tmp_path / "p.png"))
    assert res.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 1000, res.stderr
    m.write_text('{"step": 1, "tok\n' + json.dumps({"step": 2, "tokens": 20, "loss": 2.0}) + "\n")
    assert_one_line_error(cli("plot", str(m), "--out", str(tmp_path / "q.png")), f"{m}:1")
    m.write_text("")
    assert "no training-loss rows" in assert_one_line_error(cli("plot", str(m), "--out", str(tmp_path / "q.png")), m)


@pytest.fixture
def model_copy(tmp_path):
    from pmcllama.models import resolve

    dest = tmp_path / "model"
    shutil.copytree(resolve("tiny-llama"), dest)
    return dest


@pytest.mark.parametrize("damage,expect", [
    ("config_not_json", "not valid JSON"),
    ("truncated_weights", "truncated"),
    ("custom_code", "custom code"),
])
def test_broken_model_folders_are_one_line_errors(model_copy, damage, expect):
    if damage == "config_not_json":
        (model_copy / "config.json").write_text('{"model_type": "llama",,}')
        name = model_copy / "config.json"
    elif damage == "truncated_weights":
        w = model_copy / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        name = w
    else:
        cfg = json.loads((model_copy / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
        (model_copy / "config.json").write_text(json.dumps(cfg))
        name = model_copy / "config.json"
    for args in (["models", str(model_copy)], ["generate", f"model={model_copy}", "Hi", "max_new_tokens=2"]):
        assert expect in assert_one_line_error(cli(*args), name)


def _mts_csv(path: Path, n: int) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["ID", "section_header", "section_text", "dialogue"])
    for i in range(n):
        w.writerow([i, "GENHX", f"The patient is a {30 + i}-year-old.", f"Doctor: How old are you?\nPatient: {30 + i}."])
    path.write_text(buf.getvalue())
    return buf.getvalue()


def test_a_truncated_csv_is_an_error_or_a_rejected_record(tmp_path):
    full = _mts_csv(tmp_path / "full.csv", 5)
    cut = tmp_path / "cut.csv"
    cut.write_text(full[: full.rindex("Patient: 34") + 5])  # ends inside the last quoted dialogue
    src = f"sources=[{{name: m, format: mtsdialog, paths: [{cut}]}}]"
    err = assert_one_line_error(cli("instructions", f"out={tmp_path / 'o'}", src), f"{cut}:10")
    assert "cut off" in err
    res = cli("instructions", f"out={tmp_path / 'o'}", src, "on_error=skip")
    assert res.exit_code == 0, res.stderr
    rejected = [json.loads(x) for x in (tmp_path / "o" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], "cut off" in r["reason"]) for r in rejected] == [(10, True)]
    res = cli("instructions", f"out={tmp_path / 'o2'}", f"sources=[{{name: m, format: mtsdialog, paths: [{tmp_path / 'full.csv'}]}}]")
    assert res.exit_code == 0, res.stderr  # the whole file is fine


@pytest.mark.shared
def test_the_real_mts_dialog_file_cut_at_20000_bytes(shared_data, tmp_path):
    cut = tmp_path / "cut.csv"
    cut.write_bytes((shared_data / "instruct" / "mts_dialog_train.csv").read_bytes()[:20000])
    err = assert_one_line_error(cli("instructions", f"out={tmp_path / 'o'}",
                                    f"sources=[{{name: m, format: mtsdialog, paths: [{cut}]}}]"), cut)
    assert "cut off" in err


def test_duplicate_questions_without_ids_are_named(tmp_path):
    from pmcllama.benchmarks import load_benchmark

    rows = [{"question": f"Q{i % 3}?", "options": {"A": "x", "B": "y"}, "answer_idx": "A"} for i in range(5)]
    f = tmp_path / "q.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    warnings = load_benchmark("medqa", f).warnings
    assert any("2 question(s) occur more than once (2 extra copies" in w and "line 1 = line 4" in w
               and "line 2 = line 5" in w for w in warnings), warnings
    res = cli("evaluate", "model=tiny-llama", f"out={tmp_path / 'e'}", f"benchmarks=[{{name: b, format: medqa, path: {f}}}]")
    assert res.exit_code == 0 and "occur more than once" in res.stdout
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["b"]["n"] == 5 and "line 1 = line 4" in results["b"]["data_warnings"][-1]


def test_small_messages(tmp_path):
    bad_key = tmp_path / "c.yaml"
    bad_key.write_text("out: x\nsourcez: []\n")
    assert "sources" in assert_one_line_error(cli("instructions", "--config", str(bad_key)), bad_key)
    twice = tmp_path / "t.yaml"
    twice.write_text("sources: [{name: a, format: kg, ontology: hpo}, {name: a, format: kg, ontology: hpo}]\n")
    err = assert_one_line_error(cli("instructions", "--config", str(twice)), twice)
    assert "config key ''" not in err and "repeated: a" in err
    ctrl = tmp_path / "ctrl.jsonl"
    ctrl.write_text('{"instruction": "a\tb", "output": "c"}\n')
    err = assert_one_line_error(cli("instructions", f"out={tmp_path / 'o'}",
                                    f"sources=[{{name: a, format: alpaca, paths: [{ctrl}]}}]"), f"{ctrl}:1")
    assert " at (column" not in err and "at at" not in err and "(column" in err
    err = assert_one_line_error(cli("run"))
    assert "RECIPE.yaml" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert "empty" in assert_one_line_error(cli("run", str(empty)), empty)
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text("name: x\n")
    assert "nothing to do" in assert_one_line_error(cli("run", str(nothing)))


def test_a_pickled_checkpoint_is_refused_without_torchs_advice(tmp_path):
    import torch

    from pmcllama.training.checkpoint import _load_file

    p = tmp_path / "optimizer.pt"
    torch.save({"state": Cfg()}, p)  # an object, not tensors: weights_only refuses it
    with pytest.raises(UserError) as e:
        _load_file(p, lambda q: torch.load(q, map_location="cpu", weights_only=True))
    assert "pickled objects" in str(e.value) and "weights_only" not in str(e.value)
