"""Flattened micro-batches (training/varlen.py): the same loss and gradients as padded
batches, targets that never cross segments, and saved folders that name the model's own attention."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pmcllama.training import varlen
from pmcllama.training.data import IGNORE, Example, collate
from pmcllama.training.packing import doc_segments, pack


@pytest.fixture
def flat_model(tiny_model):
    m, _ = tiny_model
    before = varlen.enable(m, 64)
    assert before is not None and m.config._attn_implementation == varlen.NAME
    yield m
    varlen.disable(m, before)


def _examples(seed=0):
    rng = np.random.default_rng(seed)

    def ex(n, prompt):
        ids = rng.integers(5, 1000, n).astype(np.int64)
        labels = ids.copy()
        labels[:prompt] = IGNORE
        return Example(ids, labels, "x")

    chats = [ex(n, p) for n, p in ((9, 4), (17, 11), (6, 2), (23, 5))]
    doc = ex(30, 0)
    return [ex(14, 6), pack(chats[:3]), doc_segments(doc, [7, 19]), chats[3]]


def test_flatten_lays_segments_end_to_end_and_never_targets_a_segment_start():
    a = Example(np.array([1, 2, 3]), np.array([1, 2, 3]))
    b = Example(np.array([4, 5, 6, 7]), np.array([IGNORE, IGNORE, 6, 7]))
    c = pack([Example(np.array([8, 9]), np.array([8, 9])), Example(np.array([10, 11]), np.array([10, 11]))])
    inputs, targets = varlen.flatten([a, b, c])
    assert inputs["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 1]]
    assert inputs["pmcllama_segments"] == [0, 3, 7, 9, 11]
    # position p predicts token p+1 of the same segment, and only where that token has a label
    assert inputs["logits_to_keep"].nonzero()[:, 1].tolist() == [0, 1, 4, 5, 7, 9]
    assert targets.tolist() == [2, 3, 6, 7, 9, 11]


def test_flatten_keeps_equal_whole_examples_as_rows():
    a = Example(np.array([1, 2, 3]), np.array([1, 2, 3]))
    b = Example(np.array([4, 5, 6]), np.array([IGNORE, 5, 6]))
    inputs, targets = varlen.flatten([a, b])
    assert inputs["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert inputs["pmcllama_segments"] == [0, 3]
    assert inputs["logits_to_keep"].tolist() == [[True, True, False], [True, True, False]]
    assert targets.tolist() == [2, 3, 5, 6]
    # one packed example among them: all laid end to end
    inputs, _ = varlen.flatten([a, pack([b, a])])
    assert inputs["input_ids"].shape == (1, 9) and inputs["pmcllama_segments"] == [0, 3, 6, 9]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _windows(seed=1):
    rng = np.random.default_rng(seed)
    return [Example(ids, ids.copy(), "w") for ids in (rng.integers(5, 1000, 16).astype(np.int64) for _ in range(3))]


@pytest.mark.parametrize("batch", [_examples, _windows], ids=["ragged", "windows"])
def test_flat_loss_and_gradients_equal_the_padded_batch(flat_model, batch):
    m = flat_model
    exs = batch()
    n_items = sum(int((e.labels[1:] != IGNORE).sum()) for e in exs)
    m.zero_grad()
    flat = varlen.loss(m, exs, n_items, torch.device("cpu"))
    flat.backward()
    g_flat = _grads(m)
    varlen.disable(m, "sdpa")
    try:
        m.zero_grad()
        padded = m(**collate(exs, 0), num_items_in_batch=n_items, use_cache=False).loss
        padded.backward()
        g_pad = _grads(m)
    finally:
        varlen.enable(m, 64)
        m.zero_grad()
    assert flat.item() == pytest.approx(padded.item(), rel=1e-5)
    assert g_flat.keys() == g_pad.keys() and len(g_flat) > 10
    for name in g_flat:
        torch.testing.assert_close(g_flat[name], g_pad[name], rtol=1e-4, atol=1e-6, msg=name)
    # the segments really are kept apart: the same tokens as one segment give another loss
    whole = [Example(np.concatenate([e.input_ids for e in exs]), np.concatenate([e.labels for e in exs]))]
    with torch.no_grad():
        assert abs(float(varlen.loss(m, whole, n_items, torch.device("cpu"))) - float(flat)) > 1e-3


def test_segment_attention_without_bounds_is_an_error(flat_model):
    with pytest.raises(RuntimeError, match="segment bounds"):
        flat_model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False)


def test_a_model_without_the_attention_interface_keeps_its_own():
    class Config:
        _attn_implementation = "eager"

    class Old:
        config = Config()

        def set_attn_implementation(self, name):
            raise ValueError("does not support custom attention")

    assert varlen.enable(Old(), 64) is None


def test_soft_capped_or_sliding_window_attention_is_left_alone():
    from types import SimpleNamespace as C

    assert varlen.plain_causal(C(), 4096)
    assert varlen.plain_causal(C(sliding_window=4096), 4096)
    assert not varlen.plain_causal(C(sliding_window=1024), 4096)
    # Qwen2-style: a window in the config, but every layer full attention
    assert varlen.plain_causal(C(sliding_window=1024, layer_types=["full_attention"] * 2), 4096)
    assert not varlen.plain_causal(C(sliding_window=1024, layer_types=["full_attention", "sliding_attention"]), 4096)
    assert not varlen.plain_causal(C(attn_logit_softcapping=50.0), 512)


def test_finetune_trains_flat_and_saves_the_model_attention(tmp_path, instructions, monkeypatch):
    from test_resume import FINETUNE

    from pmcllama import finetune
    from pmcllama.training.config import FinetuneConfig

    calls = []
    flat_loss = varlen.loss
    monkeypatch.setattr(varlen, "loss", lambda *a, **k: calls.append(1) or flat_loss(*a, **k))
    cfg = FinetuneConfig(**{**FINETUNE, "lora": None, "data": str(instructions)}, out=str(tmp_path / "ft"))
    out = finetune.run(cfg)
    assert calls  # the loop took the flattened path
    config = json.loads((out / "config.json").read_text())
    assert varlen.NAME not in json.dumps(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
