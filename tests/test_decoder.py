"""The engine's LLaMA forward (`pmcllama.serve.decoder`): the same scores as transformers' own
forward, through left padding, a cached prefix, decoding steps, fused projections and the
rope types it accepts; models it does not run are left to transformers."""
from __future__ import annotations

import pytest
import torch


def _llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def _scores_step_by_step(model, decoder, prompts: list[list[int]], prefix: int, steps: int, alone: int = 0):
    """The largest difference between the decoder's last-token logits and transformers' (for
    the same whole sequences, each alone) over every step: `prefix` tokens common to every
    prompt first (one row, its cache copied to every row), then the rests left-padded, then
    `steps` decoding steps, then `alone` more of the last row by itself (its padding kept)."""
    from pmcllama.serve.engine import _pad_left

    rows = len(prompts)
    cache = decoder.new_cache()
    ids = torch.tensor([prompts[0][:prefix]])
    decoder(ids, torch.ones_like(ids), torch.arange(prefix)[None], cache)
    cache.batch_select_indices(torch.zeros(rows, dtype=torch.long))
    rests = [torch.tensor(p[prefix:]) for p in prompts]
    width = max(len(r) for r in rests)
    ids = torch.stack([_pad_left(r[None], width, dim=1)[0] for r in rests])
    mask = torch.cat([torch.ones(rows, prefix, dtype=torch.long),
                      torch.stack([_pad_left(torch.ones(1, len(r), dtype=torch.long), width, dim=1)[0] for r in rests])], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    worst, seqs = 0.0, [list(p) for p in prompts]
    logits, cache = decoder(ids, mask, positions[:, prefix:], cache)
    for step in range(steps + alone + 1):
        assert torch.isfinite(logits).all()
        want = torch.stack([model(input_ids=torch.tensor([s])).logits[0, -1] for s in seqs])
        worst = max(worst, float((logits - want).abs().max()))
        if step == steps + alone:
            break
        if step == steps:  # the last row goes on by itself
            cache.batch_select_indices(torch.tensor([len(seqs) - 1]))
            seqs, mask, logits = seqs[-1:], mask[-1:], logits[-1:]
        nxt = logits.argmax(-1)
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
        mask = torch.cat([mask, torch.ones(len(seqs), 1, dtype=torch.long)], 1)
        logits, cache = decoder(nxt[:, None], mask, mask.sum(-1, keepdim=True) - 1, cache)
    return worst


OVERRIDES = [
    {},  # grouped query heads, default rope
    {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True},  # one kv head per head, biases
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
    {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}, "head_dim": 32},
]
OVERRIDE_IDS = ["gqa", "mha-bias", "llama3-rope", "linear-rope-head-dim"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [5, 6, 7, 8, 9, 20], [5, 6, 7, 8, 9, 30, 31, 32]]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=OVERRIDE_IDS)
@pytest.mark.parametrize("prepacked", [False, True], ids=["plain", "prepacked"])
def test_the_decoder_gives_transformers_scores(overrides, prepacked):
    from pmcllama.prepack import can_prepack, prepack_linears
    from pmcllama.serve.decoder import Decoder

    model = _llama(**overrides)
    if prepacked:
        if not can_prepack(model):
            pytest.skip("this PyTorch build has no oneDNN linear ops")
        prepack_linears(model, gemv=False)
    assert Decoder.supports(model)
    decoder = Decoder(model, context=16)  # a small rotary table, so the sequences below grow it
    assert all((layer._qkv is not None) == prepacked for layer in decoder.layers)  # the fused product, once
    assert decoder.c_layers is None  # no plain weights kept: every step in PyTorch
    with torch.inference_mode():
        assert _scores_step_by_step(model, decoder, PROMPTS, prefix=5, steps=10, alone=4) < 1e-4
    assert decoder.cos.shape[0] >= 21  # grown past the 16 positions it began with


@pytest.mark.parametrize("overrides", OVERRIDES, ids=OVERRIDE_IDS)
def test_decoding_steps_run_every_layer_in_one_kernel_call(kernel, overrides, monkeypatch):
    """With the kernels, each decoding step of up to `gemv.MAX_ROWS` rows is one call of
    `pmcllama_step`, through a cached prefix, padding columns, rows at different positions, the
    last row of a batch going on by itself, and a grown slab and rotary table; prefills and steps
    of more rows stay in PyTorch. The same scores as transformers."""
    from pmcllama.prepack import prepack_linears
    from pmcllama.serve.decoder import Decoder, SlabLayer

    model = _llama(**overrides)
    prepack_linears(model)
    decoder = Decoder(model, context=16)
    assert decoder.c_layers is not None
    calls = []
    real = kernel._state["step"]
    monkeypatch.setitem(kernel._state, "step", lambda *a: calls.append(a[8]) or real(*a))  # a[8]: the rows
    monkeypatch.setattr(SlabLayer, "SPARE", 3)  # the steps outgrow their slab
    with torch.inference_mode():
        assert _scores_step_by_step(model, decoder, PROMPTS, prefix=5, steps=3, alone=12) < 1e-4
        assert calls == [3] * 3 + [1] * 12
        calls.clear()
        assert _scores_step_by_step(model, decoder, PROMPTS[1:2], prefix=2, steps=8) < 1e-4  # one row throughout
        assert calls == [1] * 8
        calls.clear()
        monkeypatch.setattr(kernel, "MAX_ROWS", 2)
        assert _scores_step_by_step(model, decoder, PROMPTS, prefix=5, steps=2, alone=2) < 1e-4
        assert calls == [1] * 2  # three rows: more than MAX_ROWS, in PyTorch
    assert decoder.cos.shape[0] >= 26


def test_a_step_the_kernel_cannot_get_memory_for_raises(kernel, monkeypatch):
    from pmcllama.prepack import prepack_linears
    from pmcllama.serve.decoder import Decoder

    model = _llama()
    prepack_linears(model)
    decoder = Decoder(model, context=16)
    cache = decoder.new_cache()
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        decoder(ids, torch.ones_like(ids), torch.arange(3)[None], cache)
        monkeypatch.setitem(kernel._state, "step", lambda *a: -1)  # what pmcllama_step returns when malloc fails
        with pytest.raises(MemoryError, match="gemv.step"):
            decoder(torch.tensor([[8]]), torch.ones(1, 4, dtype=torch.long), torch.tensor([[3]]), cache)
    assert all(layer.n == 3 for layer in cache.layers)  # the cache is as it was: the engine fails the requests


def test_the_slab_cache_grows_and_selects_rows_without_losing_columns():
    from pmcllama.serve.decoder import SlabCache, SlabLayer

    cache = SlabCache(1)
    layer = cache.layers[0]
    first = torch.arange(2 * 1 * 3 * 2, dtype=torch.float).view(2, 1, 3, 2)
    cache.update(first, -first, 0)
    assert layer.k.shape[2] == 3 + SlabLayer.SPARE
    slab = layer.k
    more = torch.full((2, 1, SlabLayer.SPARE, 2), 7.0)
    keys, values = cache.update(more, -more, 0)  # fills the spare columns in place
    assert layer.k is slab and keys.shape[2] == 3 + SlabLayer.SPARE
    keys, values = cache.update(first[:, :, :1] + 100, first[:, :, :1], 0)  # one more: a new, larger slab
    assert layer.k is not slab and keys.shape[2] == 4 + SlabLayer.SPARE
    assert torch.equal(keys[:, :, :3], first) and torch.equal(values[:, :, :3], -first)
    assert torch.equal(keys[:, :, -1:], first[:, :, :1] + 100)
    cache.batch_select_indices(torch.tensor([1, 1, 0]))
    assert torch.equal(layer.keys[:, :, :3], first[[1, 1, 0]]) and layer.values.shape == (3, 1, 4 + SlabLayer.SPARE, 2)
    layer.keys, layer.values = layer.keys[:, :, 2:], layer.values[:, :, 2:]  # the engine's cut of padding
    assert torch.equal(layer.keys[:, :, :1], first[[1, 1, 0]][:, :, 2:]) and layer.n == 2 + SlabLayer.SPARE


def test_models_the_decoder_does_not_run_are_left_to_transformers(tiny_model):
    from transformers import GPT2Config, GPT2LMHeadModel

    from pmcllama.serve.decoder import Decoder
    from pmcllama.serve.engine import Engine, Request

    assert Decoder.supports(tiny_model[0])
    dynamic = _llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    assert not Decoder.supports(dynamic)  # its frequencies depend on the sequence's length
    assert not Decoder.supports(_llama(hidden_act="gelu"))
    hooked = _llama()
    hooked.model.layers[1]._hf_hook = object()  # what accelerate's device_map dispatch leaves on a layer
    assert not Decoder.supports(hooked)
    split = _llama()
    split.model.layers[1].to("meta")  # stands in for a layer on another device
    assert not Decoder.supports(split)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=tiny_model[1].vocab_size)).eval()
    assert not Decoder.supports(gpt2)
    engine = Engine(gpt2, tiny_model[1])
    assert engine.decoder is None
    [req] = engine.generate([Request([5, 6, 7], max_tokens=3)])
    assert len(req.token_ids[0]) == 3  # generated through the model's own forward
