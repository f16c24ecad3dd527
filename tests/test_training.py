"""The shared training loop: masking, schedule, mixture sampling, accumulation, LoRA, outputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pmcllama.errors import UserError
from pmcllama.training.config import FinetuneConfig, LoraConfig
from pmcllama.training.data import IGNORE, Example, MixtureSampler, collate, encode_chat, label_tokens, read_chat_jsonl
from pmcllama.training.config import OptimizerConfig
from pmcllama.training.loop import lr_lambda, train

CHAT = [
    {"role": "system", "content": "You are a doctor."},
    {"role": "user", "content": "What is hypertension?"},
    {"role": "assistant", "content": "High blood pressure."},
]


def test_chat_labels_cover_only_the_answer(tiny_tokenizer):
    ex = encode_chat(tiny_tokenizer, CHAT, "chat", 512)
    answer = tiny_tokenizer.decode([t for t, l in zip(ex.input_ids, ex.labels) if l != IGNORE])
    assert answer == "High blood pressure.<|im_end|>\n"
    prompt = tiny_tokenizer.decode([t for t, l in zip(ex.input_ids, ex.labels) if l == IGNORE])
    assert "What is hypertension?" in prompt and "High blood" not in prompt


def test_alpaca_template_labels_answer_and_eos(tiny_tokenizer):
    ex = encode_chat(tiny_tokenizer, CHAT, "alpaca", 512)
    text = tiny_tokenizer.decode(ex.input_ids)
    assert text.startswith("Below is an instruction") and "### Instruction:\nWhat is hypertension?" in text
    answer = tiny_tokenizer.decode([t for t, l in zip(ex.input_ids, ex.labels) if l != IGNORE])
    assert answer.strip() == "High blood pressure.<|im_end|>"


def test_truncation_that_removes_the_answer_drops_the_example(tiny_tokenizer):
    long_q = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]
    assert encode_chat(tiny_tokenizer, long_q, "chat", 64) is None


def test_read_chat_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps({"messages": CHAT}) + "\n{not json\n")
    with pytest.raises(UserError, match=r"train.jsonl:2: line is not JSON"):
        read_chat_jsonl(p)
    p.write_text(json.dumps({"messages": CHAT[:2]}) + "\n")
    with pytest.raises(UserError, match=r"train.jsonl:1: record has no assistant turn"):
        read_chat_jsonl(p)


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = lr_lambda(OptimizerConfig(warmup_steps=4, min_lr_ratio=0.1), total=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(19) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert f(100) == pytest.approx(0.1)


def test_lr_schedule_linear_and_constant_decay():
    linear = lr_lambda(OptimizerConfig(warmup_steps=2, decay="linear", min_lr_ratio=0.2), total=12)
    assert [linear(s) for s in (0, 1)] == [0.5, 1.0]
    assert [linear(s) for s in (2, 7, 12, 50)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    constant = lr_lambda(OptimizerConfig(warmup_steps=0, decay="constant", min_lr_ratio=0.2), total=12)
    assert {constant(s) for s in range(20)} == {1.0}


def test_the_optimizer_section_sets_adamw(tiny_model):
    import copy

    from pmcllama.training.loop import make_optimizer

    model = copy.deepcopy(tiny_model[0])
    cfg = FinetuneConfig(data="x", out="y", lr=3e-4, optimizer={"betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1})
    opt, sched = make_optimizer(model, cfg, 10, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert (decay["betas"], decay["eps"], decay["weight_decay"], no_decay["weight_decay"]) == ((0.8, 0.99), 1e-6, 0.1, 0.0)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    default = FinetuneConfig(data="x", out="y").optimizer  # today's values: results do not move
    assert (default.betas, default.eps, default.weight_decay, default.warmup_steps, default.decay,
            default.min_lr_ratio) == ((0.9, 0.95), 1e-8, 0.0, 10, "cosine", 0.1)


class FakeShard:
    def __init__(self, docs):
        self.tokens = np.concatenate(docs).astype(np.uint16)
        lengths = np.array([len(d) for d in docs])
        self.index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1)
        self.num_docs, self.num_tokens = len(docs), int(lengths.sum())

    def doc(self, i):
        s, n = self.index[i]
        return self.tokens[s:s + n]


def _shards():
    rng = np.random.default_rng(1)
    return {
        "books": FakeShard([rng.integers(0, 900, 100) for _ in range(30)]),
        "papers": FakeShard([rng.integers(0, 900, 40) for _ in range(50)]),
        "general": FakeShard([rng.integers(0, 900, 500) for _ in range(5)]),
    }


def test_mixture_matches_weights_and_is_deterministic():
    weights = {"books": 15, "papers": 4, "general": 1}
    s1 = iter(MixtureSampler(_shards(), weights, 32, "packed", seed=3))
    picks = [next(s1).source for _ in range(4000)]
    share = {k: picks.count(k) / len(picks) for k in weights}
    for k, w in weights.items():
        p = w / 20
        assert abs(share[k] - p) < 4 * math.sqrt(p * (1 - p) / 4000), (k, share)
    s2 = iter(MixtureSampler(_shards(), weights, 32, "packed", seed=3))
    a, b = next(s2), next(iter(MixtureSampler(_shards(), weights, 32, "packed", seed=3)))
    assert np.array_equal(a.input_ids, b.input_ids)


def test_window_mode_takes_one_window_per_document():
    shards = _shards()
    sampler = MixtureSampler(shards, {"papers": 1.0}, 16, "window", seed=0)
    assert sampler.epoch_size == 50
    it = iter(sampler)
    seqs = [next(it).input_ids for _ in range(50)]
    assert all(len(s) == 16 for s in seqs)
    tokens = shards["papers"].tokens
    for s in seqs[:5]:  # each is a contiguous slice of one document
        starts = [i for i in range(len(tokens) - 15) if np.array_equal(tokens[i:i + 16], s)]
        assert starts


def _examples(tok, n=8):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ids = rng.integers(5, 1000, 12 + i).astype(np.int64)
        labels = ids.copy()
        labels[: 3 + i % 4] = IGNORE
        out.append(Example(ids, labels, "x"))
    return out


def test_collate_pads_right_and_masks_labels():
    ex = _examples(None, 3)
    b = collate(ex, pad_id=0)
    assert b["input_ids"].shape == (3, 14)
    assert b["attention_mask"][0].tolist() == [1] * 12 + [0, 0]
    assert (b["labels"][0, 12:] == IGNORE).all()
    assert label_tokens(ex) == sum(int((e.labels[1:] != IGNORE).sum()) for e in ex)


def _run_steps(tmp_path, name, micro, global_batch, examples, **extra):
    from pmcllama.models import load_model

    model, tok = load_model("tiny-llama")
    cfg = FinetuneConfig(model="tiny-llama", data="x", out=str(tmp_path / name), micro_batch=micro,
                         global_batch=global_batch, lr=1e-3, optimizer={"warmup_steps": 0}, precision="fp32", **extra)
    out = tmp_path / name
    out.mkdir()
    steps = iter([examples] * 3)
    summary = train(model, tok, cfg, steps, 3, out)
    return summary, [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()], out


def test_gradient_accumulation_gives_the_same_losses(tmp_path):
    ex = _examples(None, 8)
    _, full, out_a = _run_steps(tmp_path, "a", 8, 8, ex)
    _, accum, out_b = _run_steps(tmp_path, "b", 2, 8, ex)
    for r1, r2 in zip(full, accum):
        assert r1["loss"] == pytest.approx(r2["loss"], abs=1e-4)
    assert full[2]["loss"] < full[0]["loss"]
    from safetensors.torch import load_file

    wa, wb = load_file(out_a / "model.safetensors"), load_file(out_b / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_training_writes_metrics_plot_and_a_plain_hf_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    summary, rows, out = _run_steps(tmp_path, "c", 4, 8, _examples(None, 8))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["tokens"] == summary["tokens"] == 3 * sum(12 + i for i in range(8))
    assert rows[-1]["tokens_by_source"] == {"x": summary["tokens"]}
    assert (out / "loss.png").stat().st_size > 1000
    m = AutoModelForCausalLM.from_pretrained(str(out))
    assert m.config.vocab_size == 1024


def test_lora_saves_adapter_and_merged_weights(tmp_path):
    from safetensors.torch import load_file

    from pmcllama.models import resolve

    _, rows, out = _run_steps(tmp_path, "l", 4, 8, _examples(None, 8), lora=LoraConfig(rank=4, alpha=8, dropout=0.0))
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = load_file(out / "model.safetensors")
    base = load_file(resolve("tiny-llama") / "model.safetensors")
    assert not any("lora" in k for k in merged)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the adapter was merged in
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(merged[k], base[k])  # untouched module


def test_seq_len_beyond_the_model_context_is_refused(tmp_path):
    from pmcllama.models import load_model

    model, tok = load_model("tiny-llama")  # context 1024
    cfg = FinetuneConfig(model="tiny-llama", data="x", out=str(tmp_path / "o"), seq_len=2048, micro_batch=1,
                         global_batch=1, precision="fp32")
    (tmp_path / "o").mkdir()
    with pytest.raises(UserError, match="seq_len 2048 exceeds the model's context length 1024"):
        train(model, tok, cfg, iter([_examples(None, 1)]), 1, tmp_path / "o")


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    ex = _examples(None, 8)
    _, plain, _ = _run_steps(tmp_path, "p", 4, 8, ex)
    _, ckpt, out = _run_steps(tmp_path, "g", 4, 8, ex, grad_checkpointing=True)
    assert [r["loss"] for r in plain] == pytest.approx([r["loss"] for r in ckpt], abs=1e-5)
    assert json.loads((out / "config.json").read_text()).get("use_cache") is not False
