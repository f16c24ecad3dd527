"""Checkpoints and exact resume: a run killed with SIGKILL and resumed matches an uninterrupted
run bitwise (losses of every step, final weights); keep_last; bad checkpoints; validation rows."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pmcllama import finetune, pretrain
from pmcllama.errors import UserError
from pmcllama.training.config import FinetuneConfig, LoraConfig, PretrainConfig
from pmcllama.training.data import EpochStream, MixtureSampler

@pytest.fixture(autouse=True)
def one_thread():
    """The runs use threads=1 (bitwise determinism); give the rest of the session its threads back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


PRETRAIN = dict(model="tiny-llama", seq_len=32, micro_batch=2, global_batch=4, lr=1e-3,
                optimizer={"warmup_steps": 2}, max_steps=12, precision="fp32", threads=1, mode="window",
                save_every=2, keep_last=2, eval_every=4, val_sequences=3)
FINETUNE = dict(model="tiny-llama", seq_len=128, micro_batch=2, global_batch=4, lr=1e-3,
                optimizer={"warmup_steps": 1}, max_steps=8, precision="fp32", threads=1, save_every=2,
                keep_last=2, template="alpaca", lora={"rank": 4, "alpha": 8, "dropout": 0.1})


def _cli_args(settings: dict) -> list[str]:
    args = []
    for k, v in settings.items():
        if isinstance(v, dict):
            v = "{" + ", ".join(f"{a}: {b}" for a, b in v.items()) + "}"
        elif v is None:
            v = "null"
        args.append(f"{k}={v}")
    return args


KILLED_RUN = str(Path(__file__).resolve())  # python KILLED_RUN STEPS STAGE key=value ... (see the end)


def kill_after(steps: int) -> None:
    """Make this process SIGKILL itself as it starts optimizer step `steps` + 1, that is once
    step `steps` is logged and checkpointed: the training loop itself knows nothing of it."""
    from pmcllama.training import loop

    real, started = loop.train_step, []

    def step(run, examples):
        started.append(1)
        if len(started) > steps:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(run, examples)

    loop.train_step = step


def _killed_run(stage: str, settings: dict, after_step: int) -> None:
    """Run the stage through the CLI in a subprocess that SIGKILLs itself after `after_step`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, KILLED_RUN, str(after_step), stage, *_cli_args(settings)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _same_run(a: Path, b: Path) -> None:
    """Bitwise: every step's loss, grad norm, lr, tokens and validation loss; every final weight."""
    from safetensors.torch import load_file

    keys = ("step", "loss", "lr", "grad_norm", "tokens", "tokens_by_source", "val_loss")
    ra, rb = _rows(a), _rows(b)
    assert [{k: r.get(k) for k in keys} for r in ra] == [{k: r.get(k) for k in keys} for r in rb]
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_pretrain_killed_and_resumed_matches_uninterrupted(tmp_path, corpus):
    ref = pretrain.run(PretrainConfig(data=str(corpus), out=str(tmp_path / "ref"), **PRETRAIN))
    rows = _rows(ref)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8, 12]
    assert not (ref / "checkpoints").exists() and not (tmp_path / "ref.partial").exists()

    out = tmp_path / "run"
    settings = {"data": str(corpus), "out": str(out), **PRETRAIN}
    _killed_run("pretrain", settings, after_step=7)
    partial = tmp_path / "run.partial"
    assert [p.name for p in sorted((partial / "checkpoints").iterdir())] == ["step-000004", "step-000006"]
    assert [r["step"] for r in _rows(partial)] == list(range(1, 8))
    state = json.loads((partial / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["step"] == 6 and state["data"]["kind"] == "mixture"
    assert set(state["tokens_by_source"]) == {"books", "papers"}

    with pytest.raises(UserError, match=r"another training config.*lr: 0\.001 -> 0\.002"):
        pretrain.run(PretrainConfig(**{**settings, "lr": 2e-3}))
    assert (partial / "checkpoints" / "step-000006").is_dir()  # a refused resume leaves the run intact

    resumed = pretrain.run(PretrainConfig(**settings))
    _same_run(ref, resumed)
    assert json.loads((resumed / "manifest.json").read_text())["train"]["resumed_from_step"] == 6
    assert not (resumed / "checkpoints").exists()


@pytest.mark.slow
def test_finetune_lora_killed_and_resumed_matches_uninterrupted(tmp_path, instructions):
    ref = finetune.run(FinetuneConfig(data=str(instructions), out=str(tmp_path / "ref"), eval_every=3,
                                      **{**FINETUNE, "lora": LoraConfig(**FINETUNE["lora"])}))
    assert [r["step"] for r in _rows(ref) if "val_loss" in r] == [3, 6]
    settings = {"data": str(instructions), "out": str(tmp_path / "run"), "eval_every": 3, **FINETUNE}
    _killed_run("finetune", settings, after_step=5)
    ckpts = tmp_path / "run.partial" / "checkpoints"
    assert [p.name for p in sorted(ckpts.iterdir())] == ["step-000002", "step-000004"]
    assert not any("base_layer" in k for k in _safetensors_keys(ckpts / "step-000004" / "model.safetensors"))
    resumed = finetune.run(FinetuneConfig(**{**settings, "lora": LoraConfig(**FINETUNE["lora"])}))
    _same_run(ref, resumed)
    assert (resumed / "adapter" / "adapter_model.safetensors").is_file()


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


@pytest.mark.slow
def test_bad_checkpoints_are_clear_errors_and_force_starts_over(tmp_path, instructions, capsys):
    settings = {"data": str(instructions), "out": str(tmp_path / "run"), **FINETUNE, "lora": None,
                "max_steps": 4}
    _killed_run("finetune", settings, after_step=3)
    partial = tmp_path / "run.partial"
    ckpt = partial / "checkpoints" / "step-000002"
    cfg = FinetuneConfig(**settings)
    saved = tmp_path / "saved"
    shutil.copytree(ckpt, saved)
    shutil.copytree(partial, tmp_path / "other.partial")

    opt = ckpt / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.raises(UserError, match=r"optimizer\.pt: checkpoint file is truncated or corrupt"):
        finetune.run(cfg)
    opt.write_bytes(b"x" * (saved / "optimizer.pt").stat().st_size)
    with pytest.raises(UserError, match=r"optimizer\.pt: cannot read checkpoint file"):
        finetune.run(cfg)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"model\.safetensors: checkpoint file missing"):
        finetune.run(cfg)
    (ckpt / "state.json").write_text("{")
    with pytest.raises(UserError, match=r"state\.json: corrupt checkpoint state"):
        finetune.run(cfg)

    shutil.rmtree(ckpt)
    shutil.copytree(saved, ckpt)  # intact again: resumes from step 2
    capsys.readouterr()
    out = finetune.run(cfg)
    assert "resuming from" in capsys.readouterr().out
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4]

    other_settings = {**settings, "out": str(tmp_path / "other"), "lr": 5e-4,
                      "optimizer": {"warmup_steps": 1, "weight_decay": 0.1}}
    proc = subprocess.run([sys.executable, "-m", "pmcllama", "finetune", *_cli_args(other_settings)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    assert "checkpoint is from another training config or input (lr: 0.001 -> 0.0005; optimizer.weight_decay: 0.0 -> 0.1)" \
        in proc.stderr
    other = FinetuneConfig(**other_settings)
    capsys.readouterr()
    finetune.run(other, force=True)
    assert "resuming" not in capsys.readouterr().out
    assert [r["step"] for r in _rows(tmp_path / "other")] == [1, 2, 3, 4]


def test_sampler_and_epoch_stream_resume_exactly(corpus):
    from pmcllama.data.shards import read_corpus

    _, shards = read_corpus(corpus)
    for make in (lambda: MixtureSampler(shards, {"books": 3, "papers": 1}, 16, "window", seed=4),
                 lambda: MixtureSampler(shards, {"books": 3, "papers": 1}, 16, "packed", seed=4),
                 lambda: EpochStream([Exampleish(i) for i in range(7)], seed=4)):
        a = make()
        for _ in range(23):
            next(a)
        state = json.loads(json.dumps(a.state_dict()))
        b = make()
        b.load_state_dict(state)
        for _ in range(40):
            x, y = next(a), next(b)
            assert _ident(x) == _ident(y)


def test_held_out_units_are_never_trained_on(corpus):
    from pmcllama.data.shards import read_corpus

    _, shards = read_corpus(corpus)
    weights = {"books": 3, "papers": 1}
    val, held = MixtureSampler(shards, weights, 16, "window", seed=99).hold_out(6)
    assert len(val) == 6 and sum(len(v) for v in held.values()) == 6
    train = MixtureSampler(shards, weights, 16, "window", seed=0, exclude=held)
    assert train.epoch_size == shards["books"].num_docs + shards["papers"].num_docs - len(
        {(n, u) for n, us in held.items() for u in us})
    for _ in range(3 * train.epoch_size):
        next(train)
        name, unit = train.last_unit
        assert unit not in held.get(name, [])
    with pytest.raises(UserError, match="leaves no training data in source 'papers'"):
        MixtureSampler(shards, weights, 16, "window", seed=0, exclude={"papers": list(range(shards["papers"].num_docs))})


class Exampleish:
    def __init__(self, i):
        self.i = i


def _ident(x):
    return x.i if isinstance(x, Exampleish) else (x.source, x.input_ids.tolist())


def test_truncate_metrics_keeps_rows_up_to_the_checkpoint(tmp_path):
    from pmcllama.training.metrics import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(1, 6)) + '{"step": 6, "lo')
    truncate_metrics(path, 3)
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]
    truncate_metrics(path, 0)  # a fresh start
    assert path.read_text() == ""


def test_eval_every_needs_validation_data(tmp_path, corpus):
    with pytest.raises(UserError, match="val_sequences"):
        pretrain.run(PretrainConfig(data=str(corpus), out=str(tmp_path / "p"), **{**PRETRAIN, "val_sequences": 0}))


if __name__ == "__main__":  # the `pmcllama` CLI in a process killed after argv[1] optimizer steps
    kill_after(int(sys.argv[1]))
    from pmcllama.cli import main

    sys.argv = ["pmcllama", *sys.argv[2:]]
    main()
