"""Packing: a packed row computes exactly the per-example (per-document) losses; packed
batches are first-fit in order and resume exactly; finetune with packing runs end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pmcllama.training.data import IGNORE, EpochStream, Example, MixtureSampler, collate, encode_chat
from pmcllama.training.packing import PackedBatches, pack, segment_positions, steps_per_epoch

WORDS = "heart valve artery insulin kidney liver lung blood pressure vein fever cough pain".split()


def _chats(tok, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": "What is " + " ".join(rng.choice(WORDS, 2 + i % 5)) + "?"},
                {"role": "assistant", "content": " ".join(rng.choice(WORDS, 3 + (3 * i) % 11)) + "."}]
        out.append(encode_chat(tok, msgs, "chat" if i % 2 else "alpaca", 512))
    return out


def _loss_sum(model, examples, pad_id=0):
    """Summed token loss of a batch (num_items_in_batch=1 turns the mean into a sum)."""
    with torch.no_grad():
        return float(model(**collate(examples, pad_id), num_items_in_batch=1, use_cache=False).loss)


@pytest.fixture(params=["sdpa", "eager"])
def model(request, tiny_model):
    m, _ = tiny_model
    before = m.config._attn_implementation
    m.set_attn_implementation(request.param)
    yield m
    m.set_attn_implementation(before)


def test_segment_positions_restart_at_each_start():
    assert segment_positions(7, [3, 5]).tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert segment_positions(4, []).tolist() == [0, 1, 2, 3]


def test_packed_rows_give_the_per_example_losses(model, tiny_tokenizer):
    exs = _chats(tiny_tokenizer, 7)
    separate = sum(_loss_sum(model, [e]) for e in exs)
    rows = [pack(exs[:4]), pack(exs[4:])]  # two rows of different lengths: the shorter one is padded
    assert len(rows[0].input_ids) != len(rows[1].input_ids)
    packed = _loss_sum(model, rows)
    assert packed == pytest.approx(separate, rel=1e-5, abs=1e-5)
    # the same tokens without the segment boundaries attend across examples: a different loss
    leaky = [Example(r.input_ids, r.labels) for r in rows]
    assert abs(_loss_sum(model, leaky) - separate) > 1e-2


class Shard:
    def __init__(self, docs):
        self.tokens = np.concatenate(docs).astype(np.uint16)
        lengths = np.array([len(d) for d in docs])
        self.index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1)
        self.num_docs, self.num_tokens = len(docs), int(lengths.sum())


def test_doc_mask_gives_the_per_document_losses(model):
    rng = np.random.default_rng(2)
    docs = [np.append(rng.integers(5, 1000, n), 2) for n in (9, 30, 4, 17, 25, 3, 40)]  # each ends in EOS
    shard = Shard(docs)
    seq_len = 32
    masked = MixtureSampler({"a": shard}, {"a": 1}, seq_len, "packed", seed=0, doc_mask=True)
    plain = MixtureSampler({"a": shard}, {"a": 1}, seq_len, "packed", seed=0)
    for _ in range(masked.epoch_size):
        ex, ref = next(masked), next(plain)
        unit = masked.last_unit[1]
        assert np.array_equal(ex.input_ids, ref.input_ids)
        lo = unit * seq_len
        bounds = [0] + [int(s) - lo for s in shard.index[:, 0] if lo < s < lo + len(ex.input_ids)]
        pieces = np.split(ex.input_ids, bounds[1:])
        separate = sum(_loss_sum(model, [Example(p, p.copy())]) for p in pieces if len(p) > 1)
        assert _loss_sum(model, [ex]) == pytest.approx(separate, rel=1e-5, abs=1e-5), unit
        if len(bounds) > 1:
            assert abs(_loss_sum(model, [ref]) - separate) > 1e-3


def _fake(lengths):
    return [Example(np.full(n, i, dtype=np.int64), np.full(n, i, dtype=np.int64), f"s{i % 2}")
            for i, n in enumerate(lengths)]


def test_packed_batches_first_fit_in_order_and_resume_exactly():
    lengths = [5, 9, 3, 12, 7, 2, 11, 6, 4, 8, 10, 1]  # 78 tokens
    exs = _fake(lengths)
    a = PackedBatches(EpochStream(exs, seed=1), rows=2, seq_len=12)
    order = [int(i) for i in EpochStream(exs, seed=1).order]
    taken = []
    for _ in range(3):
        batch = next(a)
        assert len(batch) == 2 and all(len(r.input_ids) <= 12 for r in batch)
        ids = [int(r.input_ids[s]) for r in batch for s in np.flatnonzero(r.position_ids == 0)]
        assert sorted(ids) == sorted(order[len(taken):len(taken) + len(ids)])  # the next examples, in order
        taken += ids
        free = [12 - len(r.input_ids) for r in batch]
        assert lengths[order[len(taken)]] > max(free)  # the batch closed on one that fits nowhere
        for r in batch:
            assert sum(r.tokens_by_source().values()) == len(r.input_ids)
    state = json.loads(json.dumps(a.state_dict()))
    b = PackedBatches(EpochStream(exs, seed=1), rows=2, seq_len=12)
    b.load_state_dict(state)
    for _ in range(6):
        for x, y in zip(next(a), next(b)):
            assert np.array_equal(x.input_ids, y.input_ids) and np.array_equal(x.position_ids, y.position_ids)
    with pytest.raises(ValueError, match="without packing or for another batch shape"):
        PackedBatches(EpochStream(exs, 1), 3, 12).load_state_dict(state)
    assert steps_per_epoch(lambda: EpochStream(exs, seed=1), 2, 12) == 4  # 78 tokens, 24 per step, first fit


def test_packed_labels_never_cross_examples(tiny_tokenizer):
    exs = _chats(tiny_tokenizer, 3)
    row = pack(exs)
    starts = np.flatnonzero(row.position_ids == 0)
    assert list(starts) == list(np.cumsum([0] + [len(e.input_ids) for e in exs[:-1]]))
    assert (row.labels[starts] == IGNORE).all()
    assert int((row.labels[1:] != IGNORE).sum()) == sum(int((e.labels[1:] != IGNORE).sum()) for e in exs)


@pytest.mark.slow
def test_finetune_packed_killed_and_resumed_matches_uninterrupted(tmp_path, instructions):
    from test_resume import FINETUNE, _killed_run, _rows, _same_run

    from pmcllama import finetune
    from pmcllama.training.config import FinetuneConfig

    settings = {**FINETUNE, "lora": None, "packing": True, "seq_len": 256, "global_batch": 1, "micro_batch": 1,
                "max_steps": None, "epochs": 2, "data": str(instructions)}
    ref = finetune.run(FinetuneConfig(**settings, out=str(tmp_path / "ref")))
    rows = _rows(ref)
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == len(rows) < 20  # 10 examples x 2 epochs, several per row
    assert rows[-1]["tokens"] == sum(rows[-1]["tokens_by_source"].values())
    _killed_run("finetune", {**settings, "out": str(tmp_path / "run")}, after_step=3)
    resumed = finetune.run(FinetuneConfig(**settings, out=str(tmp_path / "run")))
    _same_run(ref, resumed)
