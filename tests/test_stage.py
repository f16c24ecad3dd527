"""The stage contract: manifest, atomic publish, no-op rerun, --force."""
from __future__ import annotations


import pytest

from pmcllama.config import Config
from pmcllama.stage import StageResult, describe_input, read_manifest, run_stage


class Cfg(Config):
    x: int = 1


def _work(calls):
    def work(tmp):
        calls.append(tmp)
        (tmp / "artifact.txt").write_text("hello")
        return StageResult(counts={"n": 3}, info={"extra": "yes"})
    return work


def test_manifest_records_config_inputs_counts(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("abc")
    calls = []
    out = run_stage("demo", Cfg(x=2), tmp_path / "out", [inp], _work(calls), log=lambda m: None)
    m = read_manifest(out)
    assert m["stage"] == "demo" and m["config"] == {"x": 2} and m["counts"] == {"n": 3}
    assert m["inputs"] == [{"path": str(inp), "size": 3,
                            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]
    assert m["extra"] == "yes" and m["timings"]["wall_s"] >= 0 and m["pmcllama_version"]
    assert (out / "config.yaml").read_text() == "x: 2\n"
    assert not (tmp_path / "out.partial").exists()


def test_rerun_is_a_no_op_and_force_redoes(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("abc")
    calls, logs = [], []
    run_stage("demo", Cfg(), tmp_path / "out", [inp], _work(calls), log=logs.append)
    run_stage("demo", Cfg(), tmp_path / "out", [inp], _work(calls), log=logs.append)
    assert len(calls) == 1 and "up to date" in logs[-1]
    run_stage("demo", Cfg(), tmp_path / "out", [inp], _work(calls), force=True, log=logs.append)
    assert len(calls) == 2
    inp.write_text("changed")  # a changed input is not current
    run_stage("demo", Cfg(), tmp_path / "out", [inp], _work(calls), log=logs.append)
    run_stage("demo", Cfg(x=5), tmp_path / "out", [inp], _work(calls), log=logs.append)  # nor a changed config
    assert len(calls) == 4


def test_failed_work_leaves_no_finished_looking_output(tmp_path):
    def boom(tmp):
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("demo", Cfg(), tmp_path / "out", [], boom, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_stage_folder_input_is_identified_by_its_manifest(tmp_path):
    out = run_stage("demo", Cfg(), tmp_path / "out", [], _work([]), log=lambda m: None)
    d = describe_input(out)
    assert set(d) == {"path", "manifest_sha256"}
