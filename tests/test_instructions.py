"""STAGE 3a: alpaca conversion, bad input, split, dedup, outputs, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pmcllama.config import build_config
from pmcllama.errors import ConfigError, UserError
from pmcllama.instructions import DEFAULT_SYSTEM_PROMPT, InstructionsConfig, run

RECORDS = [
    {"instruction": "What causes anemia?", "input": "", "output": "Iron deficiency is common."},
    {"instruction": "Answer as a doctor.", "input": "I have a headache.", "output": "Rest and drink water."},
]


def make_cfg(tmp_path, sources, **kw):
    return build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "sources": sources, **kw})


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def all_records(out):
    return read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")


def test_alpaca_json_with_system_prompt(tmp_path):
    path = write_json(tmp_path / "a.json", RECORDS)
    out = run(make_cfg(tmp_path, [{"name": "a", "format": "alpaca", "paths": [path]}], val_fraction=0))
    recs = read_jsonl(out / "train.jsonl")
    assert read_jsonl(out / "val.jsonl") == []
    assert recs[0] == {"id": "a-0", "source": "a", "task": "qa", "messages": [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "What causes anemia?"},
        {"role": "assistant", "content": "Iron deficiency is common."}]}
    assert recs[1]["task"] == "dialogue"
    assert recs[1]["messages"][1:] == [
        {"role": "user", "content": "Answer as a doctor.\n\nI have a headache."},
        {"role": "assistant", "content": "Rest and drink water."}]
    assert json.loads((out / "alpaca.json").read_text()) == RECORDS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {"train": "train.jsonl", "val": None, "probe": None, "alpaca": "alpaca.json"}
    assert manifest["counts"] == {"train": 2, "val": 0, "probe": 0, "rejected": 0, "duplicates": 0}
    assert not (out / "probe.jsonl").exists() and not (out / "rejected.jsonl").exists()


def test_alpaca_jsonl_without_system_prompt(tmp_path):
    rows = [dict(RECORDS[0]), {"instruction": "Explain.", "output": "Because.", "input": None}]
    path = write_jsonl(tmp_path / "a.jsonl", rows[:1] + [""] + rows[1:])  # blank lines are ignored
    cfg = make_cfg(tmp_path, [{"name": "b", "format": "alpaca", "paths": [path]}],
                   val_fraction=0, system_prompt=None)
    recs = read_jsonl(run(cfg) / "train.jsonl")
    assert [r["messages"] for r in recs] == [
        [{"role": "user", "content": "What causes anemia?"},
         {"role": "assistant", "content": "Iron deficiency is common."}],
        [{"role": "user", "content": "Explain."}, {"role": "assistant", "content": "Because."}]]


def test_malformed_jsonl_line_stops_with_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], RECORDS[1], "{not json"])
    with pytest.raises(UserError) as err:
        run(make_cfg(tmp_path, [{"name": "b", "format": "alpaca", "paths": [path]}]))
    assert err.value.path == path and err.value.line == 3
    assert "bad.jsonl:3:" in str(err.value) and "not valid JSON" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("item, reason", [
    ({"instruction": "Q?"}, "missing 'output'"),
    ({"output": "A."}, "missing 'instruction'"),
    ({"instruction": "Q?", "output": 3}, "'output' is not a string"),
    ({"instruction": "Q?", "output": "  "}, "empty output"),
    (["Q?", "A."], "a record must be a JSON object"),
])
def test_bad_json_item_names_the_item(tmp_path, item, reason):
    path = write_json(tmp_path / "a.json", [RECORDS[0], item])
    with pytest.raises(UserError, match=f"item 1: {reason}") as err:
        run(make_cfg(tmp_path, [{"name": "a", "format": "alpaca", "paths": [path]}]))
    assert err.value.path == path


def test_json_not_an_array(tmp_path):
    path = write_json(tmp_path / "a.json", {"instruction": "Q?", "output": "A."})
    with pytest.raises(UserError, match="array"):
        run(make_cfg(tmp_path, [{"name": "a", "format": "alpaca", "paths": [path]}]))


def test_skip_policy_writes_rejected(tmp_path):
    jl = write_jsonl(tmp_path / "a.jsonl", [RECORDS[0], "{oops", {"instruction": "Q"}, RECORDS[1]])
    js = write_json(tmp_path / "b.json", [{"instruction": "Q", "output": ""}, {"instruction": "Z", "output": "Y"}])
    cfg = make_cfg(tmp_path, [{"name": "a", "format": "alpaca", "paths": [jl, js]}], on_error="skip")
    out = run(cfg)
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["line"], r["item"], r["reason"]) for r in rejected] == [
        (2, None, "not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
        (3, None, "missing 'output'"), (None, 0, "empty output")]
    assert rejected[0]["record"] == "{oops" and rejected[0]["path"] == jl
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["rejected"] == 3 and counts["train"] + counts["val"] == 3
    assert json.loads((out / "stats.json").read_text())["sources"]["a"]["rejected"] == 3


def test_source_with_no_records_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Q"}])
    with pytest.raises(UserError, match="source 'x' produced no records"):
        run(make_cfg(tmp_path, [{"name": "x", "format": "alpaca", "paths": [path]}], on_error="skip"))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="source 'x': input file not found"):
        run(make_cfg(tmp_path, [{"name": "x", "format": "alpaca", "paths": [str(tmp_path / "no.json")]}]))


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="needs paths"):
        make_cfg(tmp_path, [{"name": "x", "format": "alpaca"}])
    with pytest.raises(ConfigError, match="root only apply to format: kg"):
        make_cfg(tmp_path, [{"name": "x", "format": "alpaca", "paths": ["a.json"], "root": "HP:1"}])
    with pytest.raises(ConfigError, match="task only apply to format: alpaca"):
        make_cfg(tmp_path, [{"name": "x", "format": "kg", "task": "qa"}])
    with pytest.raises(ConfigError, match="vocabularies only apply to format: kg"):
        make_cfg(tmp_path, [{"name": "x", "format": "alpaca", "paths": ["a.json"], "vocabularies": ["MSH"]}])
    with pytest.raises(ConfigError, match="weight"):
        make_cfg(tmp_path, [{"name": "x", "format": "kg", "weight": 0}])
    with pytest.raises(ConfigError, match="rationales.sources names no source: y"):
        make_cfg(tmp_path, [{"name": "x", "format": "kg"}],
                 rationales={"base_url": "http://localhost:1/v1", "model": "m", "sources": ["y"]})
    with pytest.raises(ConfigError, match="unique"):
        make_cfg(tmp_path, [{"name": "x", "format": "kg"}, {"name": "x", "format": "kg"}])
    with pytest.raises(ConfigError, match="val_fraction"):
        make_cfg(tmp_path, [{"name": "x", "format": "kg"}], val_fraction=1.0)
    with pytest.raises(ConfigError, match="sources"):
        make_cfg(tmp_path, [])


def _split(tmp_path, name, n, **kw):
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(n)]
    path = write_json(tmp_path / f"{name}.json", rows)
    cfg = build_config(InstructionsConfig, {"out": str(tmp_path / name), "sources": [
        {"name": "s", "format": "alpaca", "paths": [path]}], **kw})
    out = run(cfg)
    return [r["id"] for r in read_jsonl(out / "train.jsonl")], [r["id"] for r in read_jsonl(out / "val.jsonl")]


def test_split_sizes_and_determinism(tmp_path):
    train, val = _split(tmp_path, "a", 100, val_fraction=0.1, seed=0)
    assert len(train) == 90 and len(val) == 10 and not set(train) & set(val)
    assert _split(tmp_path, "b", 100, val_fraction=0.1, seed=0) == (train, val)
    assert _split(tmp_path, "c", 100, val_fraction=0.1, seed=1)[1] != val
    assert [len(x) for x in _split(tmp_path, "d", 2, val_fraction=0.01)] == [1, 1]
    assert [len(x) for x in _split(tmp_path, "e", 1, val_fraction=0.5)] == [1, 0]
    assert [len(x) for x in _split(tmp_path, "f", 10, val_fraction=0)] == [10, 0]


def test_dedup_and_max_records(tmp_path):
    a = write_json(tmp_path / "a.json", RECORDS + RECORDS + [RECORDS[0]])
    b = write_jsonl(tmp_path / "b.jsonl", RECORDS)
    c = write_jsonl(tmp_path / "c.jsonl", [{"instruction": f"Q{i}", "output": "A"} for i in range(10)])
    cfg = make_cfg(tmp_path, [{"name": "a", "format": "alpaca", "paths": [a]},
                              {"name": "b", "format": "alpaca", "paths": [b]},
                              {"name": "c", "format": "alpaca", "paths": [c], "max_records": 4}],
                   val_fraction=0)
    out = run(cfg)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["duplicates"] == 5 and counts["train"] == 6
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sources"]["a"]["duplicates"] == 3 and stats["sources"]["b"]["duplicates"] == 2
    assert stats["sources"]["c"]["records"] == 4
    assert stats["splits"]["train"]["answer_chars"]["max"] == len("Iron deficiency is common.")


def test_rerun_is_a_no_op(tmp_path, capsys):
    path = write_json(tmp_path / "a.json", RECORDS)
    cfg = make_cfg(tmp_path, [{"name": "a", "format": "alpaca", "paths": [path]}])
    out = run(cfg)
    before = (out / "manifest.json").read_text()
    run(cfg)
    assert "up to date" in capsys.readouterr().out
    assert (out / "manifest.json").read_text() == before


def test_cli_missing_file_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pmcllama", "instructions", f"out={tmp_path / 'out'}",
         "sources=[{name: x, format: alpaca, paths: [missing.json]}]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.json" in lines[0] and "not found" in lines[0]


@pytest.mark.shared
def test_chatdoctor(shared_data, tmp_path):
    path = shared_data / "instruct" / "chatdoctor5k.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    cfg = make_cfg(tmp_path, [{"name": "chatdoctor", "format": "alpaca", "paths": [str(path)], "max_records": 200}])
    out = run(cfg)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["train"] + counts["val"] + counts["duplicates"] == 200
    assert counts["val"] == 10 and counts["rejected"] == 0
    recs = all_records(out)
    assert all(r["task"] == "dialogue" and r["messages"][-1]["role"] == "assistant" for r in recs)
    assert len(json.loads((out / "alpaca.json").read_text())) == counts["train"]
