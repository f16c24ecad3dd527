"""The one-row product kernel (`pmcllama.gemv`) and its use by the prepacked layers: the same
numbers as PyTorch's product, only for one row, the plain weights kept without a second copy
of a tied matrix, and oneDNN alone wherever the kernel cannot be built."""
from __future__ import annotations

import os

import pytest
import torch

from pmcllama import gemv, models
from pmcllama.prepack import FusedLinear, PackedLinear, prepack_linears


def test_the_kernel_builds_and_passes_its_self_check_here(kernel):
    assert kernel.reason() is None


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 16, 32])
@pytest.mark.parametrize("n,k,bias", [(1, 1, False), (7, 3, True), (8, 8, False), (37, 29, True),
                                      (1000, 577, False), (49, 1536, True)])
def test_the_kernel_gives_pytorchs_product_for_a_few_rows(kernel, rows, n, k, bias):
    gen = torch.Generator().manual_seed(n * 1000 + k + rows)
    w, x = torch.randn(n, k, generator=gen), torch.randn(rows, 1, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    y = gemv.gemv(w, x, b)
    assert y.shape == ((n,) if rows == 1 else (rows, n))
    # as close to the exact product (float64) as PyTorch's own fp32 product is, give or take
    exact = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double()).reshape(y.shape)
    torch_error = (torch.nn.functional.linear(x, w, b).reshape(y.shape) - exact).abs().max().item()
    scale = (x.abs().reshape(rows, k) @ w.abs().T).max().item()
    assert (y - exact).abs().max().item() <= 4 * torch_error + 1e-7 * scale
    threads = torch.get_num_threads()
    try:  # each output is one thread's sum in a fixed order: the thread count changes no bit
        torch.set_num_threads(1)
        assert torch.equal(gemv.gemv(w, x, b), y)
    finally:
        torch.set_num_threads(threads)


def test_the_kernel_refuses_what_it_cannot_compute(kernel):
    w = torch.randn(4, 6)
    for bad in (dict(x=torch.randn(gemv.MAX_ROWS + 1, 6)), dict(x=torch.randn(2, 4)), dict(x=torch.randn(6, dtype=torch.float64)),
                dict(x=torch.randn(6), weight=torch.randn(6, 4).t()), dict(x=torch.randn(6), bias=torch.randn(3))):
        with pytest.raises(ValueError, match="gemv: "):
            gemv.gemv(bad.get("weight", w), bad["x"], bad.get("bias"))


def test_prepacked_layers_send_a_few_rows_to_the_kernel_and_more_to_onednn(kernel, monkeypatch):
    calls = []
    for name in ("fn", "gemm"):
        real = gemv._state[name]
        monkeypatch.setitem(gemv._state, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    torch.manual_seed(0)
    parent = torch.nn.Module()
    for name, out in (("q_proj", 6), ("k_proj", 2), ("v_proj", 3), ("o_proj", 5)):
        setattr(parent, name, torch.nn.Linear(5, out, bias=name != "o_proj"))
    plain = {n: getattr(parent, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert prepack_linears(parent) == 4
    assert parent.o_proj.plain is not None and parent.q_proj.fused.product.plain is not None
    with torch.inference_mode():
        for shape, kernel_calls in (((1, 1, 5), ["fn"] * 2), ((3, 5), ["gemm"] * 2), ((2, 1, 5), ["gemm"] * 2),
                                    ((gemv.MAX_ROWS, 5), ["gemm"] * 2), ((gemv.MAX_ROWS + 1, 5), [])):
            calls.clear()
            x = torch.randn(*shape)
            for n, lin in plain.items():
                got = getattr(parent, n)(x)
                assert got.shape == lin(x).shape and torch.allclose(got, lin(x), atol=1e-5), (shape, n)
            assert calls == kernel_calls, shape  # q, k, v share one product; o is the other


def test_a_model_keeps_its_plain_weights_once_and_only_when_asked(kernel, tiny_model):
    plain, _ = tiny_model
    served, _ = models.load_model("tiny-llama", prepack=True)
    layers = [m for m in served.modules() if isinstance(m, PackedLinear)]
    layers += [m.fused.product for m in served.modules() if isinstance(m, FusedLinear) and m.index == 0]
    assert layers and all(m.plain is not None for m in layers)
    # the output layer is tied to the embeddings: its plain weight is the same memory, not a copy
    assert served.lm_head.plain.data_ptr() == served.model.embed_tokens.weight.data_ptr()
    assert torch.equal(served.lm_head.plain, plain.lm_head.weight)
    assert not any("plain" in n for n, _ in served.named_parameters())  # nothing new to train or save
    onednn_only, _ = models.load_model("tiny-llama")
    prepack_linears(onednn_only, gemv=False)
    assert all(m.plain is None for m in onednn_only.modules() if isinstance(m, PackedLinear))


def test_without_a_compiler_onednn_does_every_product(monkeypatch, tmp_path, tiny_model):
    monkeypatch.setattr(gemv, "_state", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(gemv.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert not gemv.available()
    assert gemv.reason()
    model, _ = models.load_model("tiny-llama", prepack=True)
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert packed and all(m.plain is None for m in packed)
    ids = torch.randint(0, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, tiny_model[0](input_ids=ids).logits, atol=1e-4)
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))  # a failed build leaves nothing


def test_the_kernel_is_built_once_per_source(kernel, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = gemv._build()
    assert first.parent == tmp_path / "pmcllama" / "kernels" and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert gemv._build() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left


def test_a_folder_others_can_write_in_is_never_used(kernel, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(gemv.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    shared = tmp_path / "cache" / "pmcllama" / "kernels"
    shared.mkdir(parents=True)
    shared.chmod(0o777)  # a library someone else put here would be loaded: not this folder
    built = gemv._build()
    assert built.parent == tmp_path / "tmp" / f"pmcllama-kernels-{os.getuid()}" and not list(shared.iterdir())
    assert built.parent.stat().st_mode & 0o777 == 0o700
