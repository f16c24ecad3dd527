"""Prepacked Linear layers for generation on CPU (`pmcllama.prepack`): the same numbers and
the same greedy text as the plain model, applied where a model is loaded only to generate,
and left out wherever it would not be safe."""
from __future__ import annotations

import sys

import pytest
import torch

from pmcllama import models
from pmcllama.prepack import FusedLinear, PackedLinear, prepack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


def _linears(model) -> int:
    return sum(type(m) is torch.nn.Linear for m in model.modules())


def test_a_prepacked_model_gives_the_same_logits_and_greedy_tokens(tiny_model):
    from pmcllama.serve.engine import Engine, Request

    plain, tok = tiny_model
    packed, _ = models.load_model("tiny-llama", prepack=True)
    kinds = [type(m) for m in packed.modules()]
    layers = plain.config.num_hidden_layers
    assert _linears(packed) == 0 and kinds.count(PackedLinear) + kinds.count(FusedLinear) == _linears(plain)
    assert kinds.count(FusedLinear) == 5 * layers  # q, k, v and gate, up of every layer share one matrix
    assert not any("proj" in n for n, _ in packed.named_parameters())  # the plain weights were let go
    ids = torch.randint(0, len(tok), (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(packed(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)
    prompts = ["Heart", "The aorta is a large", "x y z w v u t s r q p o n m"]

    def greedy(model):
        engine = Engine(model, tok)
        return [r.token_ids[0] for r in engine.generate([Request(tok(p)["input_ids"], max_tokens=12) for p in prompts])]

    assert greedy(packed) == greedy(plain)


def test_fused_siblings_give_each_its_own_columns_whatever_the_order():
    torch.manual_seed(0)
    parent = torch.nn.Module()
    for name, out in (("q_proj", 6), ("k_proj", 2), ("v_proj", 3)):
        setattr(parent, name, torch.nn.Linear(5, out, bias=True))
    plain = {n: getattr(parent, n) for n in ("q_proj", "k_proj", "v_proj")}
    assert prepack_linears(parent) == 3 and all(type(getattr(parent, n)) is FusedLinear for n in plain)
    x, x2 = torch.randn(4, 5), torch.randn(4, 5)
    with torch.inference_mode():
        for order in (["q_proj", "k_proj", "v_proj"], ["v_proj", "q_proj", "k_proj"], ["k_proj", "k_proj"]):
            for n in order:
                assert torch.allclose(getattr(parent, n)(x), plain[n](x), atol=1e-6), (order, n)
        assert torch.allclose(parent.q_proj(x), plain["q_proj"](x), atol=1e-6)
        assert torch.allclose(parent.k_proj(x2), plain["k_proj"](x2), atol=1e-6)  # a new input mid-way
        for n in ("q_proj", "v_proj"):
            assert torch.allclose(getattr(parent, n)(x2), plain[n](x2), atol=1e-6)
    assert parent.q_proj.fused.y is None  # every sibling took its columns: the product is let go


def test_generation_and_fp32_scoring_load_prepacked_models():
    from pmcllama.evaluate import load_for
    from pmcllama.generate import GenerateConfig, complete
    from pmcllama.serve import ServeConfig, load_backend

    backend = load_backend(ServeConfig(model="tiny-llama"))
    assert _linears(backend.model) == 0 and any(type(m) is PackedLinear for m in backend.model.modules())
    assert _linears(load_backend(ServeConfig(model="tiny-llama", prepack=False)).model) > 0
    folder = models.resolve("tiny-llama")
    assert _linears(load_for(folder, "generate", "fp32")[0]) == 0
    scoring, _ = load_for(folder, "loglik", "fp32")  # log-likelihood scoring: prepacked, no few-row copies
    packed = [m.fused.product if type(m) is FusedLinear else m for m in scoring.modules()
              if type(m) in (PackedLinear, FusedLinear)]
    assert _linears(scoring) == 0 and packed and all(m.plain is None for m in packed)
    assert _linears(load_for(folder, "loglik", "bf16")[0]) > 0  # bf16 autocast keeps PyTorch's layers
    # `pmcllama generate`'s pinned greedy outputs (tests/test_serve.py) hold on the packed model
    out = complete(backend.model, backend.tok, ["Heart", "The aorta is a large", "Insulin"],
                   GenerateConfig(max_new_tokens=10, stream=False))
    assert [r["completion"] for r in out] == ["art" * 10, "ge" * 10, "in" * 10]


def test_prepack_leaves_alone_what_it_cannot_speed_up_safely():
    from peft import LoraConfig, get_peft_model

    half, _ = models.load_model("tiny-llama", dtype=torch.bfloat16)
    assert prepack_linears(half) == 0 and _linears(half) > 0
    base, _ = models.load_model("tiny-llama")
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    before = _linears(wrapped)
    assert prepack_linears(wrapped) == 0 and _linears(wrapped) == before
    meta = torch.nn.Sequential(torch.nn.Linear(4, 4, device="meta"))
    assert prepack_linears(meta) == 0



_HEAP = """
import ctypes, sys, torch
from pmcllama import prepack
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
kept = prepack.keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.ones(5 << 20)  # an activation of 20 MB
mapped = libc.mallinfo2().hblkhd >= 20 << 20   # a mapping of its own, unmapped when freed
del x
print(kept, mapped, libc.mallinfo2().fordblks >= 20 << 20)  # its memory kept free in the heap
"""


def _heap(arm: str, **env) -> list[str]:
    import os
    import subprocess

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    return subprocess.run([sys.executable, "-c", _HEAP, arm], capture_output=True, text=True, check=True,
                          env={**clean, **env}).stdout.split()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_freed_activations_stay_in_the_heap_for_the_next_forward():
    """Scoring's activations of up to 32 MB come from the heap and their memory stays there when
    freed (no page faults when the next forward takes it again); by default glibc maps each
    such block afresh and unmaps it when freed."""
    assert _heap("default") == ["None", "True", "False"]
    assert _heap("keep") == ["True", "False", "True"]
    # the user's own malloc settings are left alone
    assert _heap("keep", MALLOC_ARENA_MAX="2")[:2] == ["False", "True"]
    assert _heap("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000")[0] == "False"
