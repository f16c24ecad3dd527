"""Observability: metric rows (MFU, memory, tokens per source), TensorBoard, W&B errors, plots."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pmcllama.errors import UserError
from pmcllama.models import load_model
from pmcllama.plots import loss_series
from pmcllama.training.config import FinetuneConfig
from pmcllama.training.data import IGNORE, Example
from pmcllama.training.loop import train
from pmcllama.training.metrics import _PEAKS, memory


def _examples(n=8):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ids = rng.integers(5, 1000, 12 + i).astype(np.int64)
        labels = ids.copy()
        labels[:3] = IGNORE
        out.append(Example(ids, labels, "a" if i % 2 else "b"))
    return out


def _train(tmp_path, **extra):
    model, tok = load_model("tiny-llama")
    out = tmp_path / "run"
    out.mkdir()
    cfg = FinetuneConfig(model="tiny-llama", data="x", out=str(out), micro_batch=4, global_batch=8, lr=1e-3,
                         optimizer={"warmup_steps": 0}, precision="fp32", **extra)
    val = _examples(3)
    summary = train(model, tok, cfg, iter([_examples()] * 4), 4, out, val=val)
    return summary, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], out


def test_rows_have_mfu_memory_and_tokens_per_source_and_tensorboard_gets_them(tmp_path):
    summary, rows, out = _train(tmp_path, peak_flops=1e9, loggers=["tensorboard"], eval_every=2)
    n_params = 1024 * 64 + 2 * (4 * 64 * 64 - 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64  # tiny-llama, tied
    tokens = sum(len(e.input_ids) for e in _examples())
    previous = {"elapsed_s": 0.0, "tokens": 0, "rss_peak_mib": 0.0}
    for r in rows:
        # within the rounding of the row (tokens_per_s to 0.1, mfu to 1e-5), which matters when a
        # busy machine makes tokens/s small
        assert r["mfu"] > 0 and r["mfu"] == pytest.approx(6 * n_params * r["tokens_per_s"] / 1e9,
                                                          abs=6 * n_params * 0.05 / 1e9 + 5e-6)
        # tokens/s is this step's tokens over this step's time, which lies inside the elapsed time
        # since the previous row: a rate from the wrong token count or the wrong clock fails here
        assert r["tokens"] - previous["tokens"] == tokens
        step_s = tokens / r["tokens_per_s"]
        assert 0 < step_s <= r["elapsed_s"] - previous["elapsed_s"] + 0.011
        assert r["rss_peak_mib"] >= previous["rss_peak_mib"]  # a peak never goes down
        previous = r
    assert rows[-1]["tokens_by_source"] == {
        "a": 4 * sum(len(e.input_ids) for e in _examples() if e.source == "a"),
        "b": 4 * sum(len(e.input_ids) for e in _examples() if e.source == "b")}
    assert rows[-1]["tokens"] == 4 * tokens
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [round(e.value, 4) for e in acc.Scalars("loss")] == [round(r["loss"], 4) for r in rows]
    assert "val_loss" in acc.Tags()["scalars"] and "tokens_by_source/a" in acc.Tags()["scalars"]
    # the peak is this process's: never above what memory() reads afterwards, which is the kernel's
    # high-water mark of this process
    now = memory(torch.device("cpu"))["rss_peak_mib"]
    assert rows[-1]["rss_peak_mib"] <= summary["rss_peak_mib"] <= now
    if _VM.is_file():
        assert now == pytest.approx(_vm("VmHWM"), abs=2)


def test_mfu_uses_the_measured_matmul_peak_without_peak_flops(tmp_path):
    _, rows, _ = _train(tmp_path)
    n_params = sum(p.numel() for p in load_model("tiny-llama")[0].parameters())
    peaks = [v for (dev, precision, _), v in _PEAKS.items() if dev == "cpu" and precision == "fp32"]
    assert peaks  # measured once in this process and kept
    for r in rows:
        assert any(r["mfu"] == pytest.approx(6 * n_params * r["tokens_per_s"] / p, abs=6 * n_params * 0.05 / p + 5e-6)
                   for p in peaks)


_VM = Path("/proc/self/status")


def _vm(field: str) -> float:
    """A memory field of /proc/self/status in MiB (Linux)."""
    line = next(l for l in _VM.read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not _VM.is_file(), reason="needs Linux /proc to compare with")
@pytest.mark.slow
def test_peak_rss_grows_by_a_measured_allocation():
    """In a fresh process, touching 256 MiB more than the peak so far raises the reported peak by
    about 256 MiB, and the figure is the kernel's own high-water mark (a KiB/MiB slip, a figure of
    another process or a current rather than peak RSS fails)."""
    code = (
        "import json, types, numpy\n"
        "from pmcllama.training.metrics import memory\n"
        "cpu = types.SimpleNamespace(type='cpu')\n"  # all memory() reads of a device; no torch import
        "before = memory(cpu)['rss_peak_mib']\n"
        "rss = next(l for l in open('/proc/self/status') if l.startswith('VmRSS:'))\n"
        "gap = before - int(rss.split()[1]) / 1024\n"  # imports peaked above what is held now
        "block = numpy.ones(int((gap + 256) * 2 ** 20) // 8)\n"
        "after = memory(cpu)['rss_peak_mib']\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(json.dumps({'before': before, 'after': after, 'hwm': int(hwm.split()[1]) / 1024}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert 250 <= m["after"] - m["before"] <= 256 + 32
    assert m["after"] == pytest.approx(m["hwm"], abs=2)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_the_package_is_a_clear_error_before_training(tmp_path):
    with pytest.raises(UserError, match=r"loggers: wandb needs the 'wandb' package, which is not installed"):
        _train(tmp_path, loggers=["wandb"])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _write_metrics(folder, losses, val_every):
    folder.mkdir()
    rows = [{"step": i + 1, "loss": l, "tokens": 100 * (i + 1), **({"val_loss": l + 0.5} if (i + 1) % val_every == 0
                                                                   else {})} for i, l in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_plot_command_overlays_runs_with_validation_points(tmp_path):
    import matplotlib.image

    _write_metrics(tmp_path / "base", [3.0, 2.5, 2.2, 2.0], 2)
    _write_metrics(tmp_path / "pmc", [2.5, 2.1, 1.9, 1.8], 4)
    s = loss_series(tmp_path / "base" / "metrics.jsonl")
    assert s == {"x": [100, 200, 300, 400], "loss": [3.0, 2.5, 2.2, 2.0], "val_x": [200, 400], "val_loss": [3.0, 2.5]}
    assert loss_series(tmp_path / "pmc" / "metrics.jsonl", x="step")["val_x"] == [4]
    png = tmp_path / "cmp.png"
    proc = subprocess.run([sys.executable, "-m", "pmcllama", "plot", str(tmp_path / "base"),
                           str(tmp_path / "pmc" / "metrics.jsonl"), "--out", str(png), "--x", "step"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "(2 runs)" in proc.stdout
    img = matplotlib.image.imread(png)
    assert img.shape[0] == 480 and img.shape[1] == 840  # 7 x 4 inches at 120 dpi
    assert len(np.unique(img.reshape(-1, img.shape[-1])[:, :3], axis=0)) > 20  # drawn, not blank
    proc = subprocess.run([sys.executable, "-m", "pmcllama", "plot", str(tmp_path), "--out", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no metrics.jsonl" in proc.stderr
