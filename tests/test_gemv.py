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


def _torch_tree_attention(query, key, value, tree, prefix, scale):
    """training.varlen's tree attention on PyTorch's kernels (the kernel turned away)."""
    from pmcllama.training import varlen

    class Module:
        layer_idx, is_causal, training = 0, True, False
        num_key_value_groups = query.shape[1] // key.shape[1]

    fits, gemv.tree_attention_fits = gemv.tree_attention_fits, lambda *a: False
    try:
        return varlen._tree_attention(Module, query, key, value, tree, 0.0, scale,
                                      {"pmcllama_prefix": None if prefix is None else {0: prefix}})[0][0]
    finally:
        gemv.tree_attention_fits = fits


@pytest.fixture(params=["avx2", "avx512"])
def attention_path(request, kernel, monkeypatch):
    """Each test of the scoring attention on both of its paths: AVX2 (AVX-512 turned away), and
    AVX-512 where this CPU has it (`gemv.wide_fits`; the test skips for head dims it does not take)."""
    if request.param == "avx2":
        monkeypatch.setattr(gemv, "wide_fits", lambda *a: False)
    elif not gemv._state["avx512"]:
        pytest.skip("this CPU has no AVX-512F")
    return request.param


def _on_path(path: str, q: torch.Tensor) -> None:
    if path == "avx512" and not gemv.wide_fits(q):
        pytest.skip(f"the AVX-512 path does not take head dim {q.shape[3]}")


@pytest.mark.parametrize("heads,kv,d,n_prefix", [(9, 3, 64, 0), (4, 4, 16, 7), (6, 2, 72, 20), (2, 1, 128, 0),
                                                  (8, 2, 80, 5)])
def test_the_scoring_attention_kernel_equals_pytorchs(attention_path, heads, kv, d, n_prefix):
    gen = torch.Generator().manual_seed(heads * 100 + d)
    # segments of 1 to 70 tokens, questions whose choices' tails see the question's prompt
    tree, at = [], 0
    for length, tails in ((70, ()), (1, ()), (33, (2, 5, 1)), (9, ()), (12, (8, 8))):
        tree.append((at, at + length, None))
        ctx, at = (at, at + length), at + length
        for t in tails:
            tree.append((at, at + t, ctx))
            at += t
    tokens = at
    # as the model's attention passes them: q and k rotated (their own tensors), v a view of the fused projection
    q = torch.randn(tokens, heads, d, generator=gen).transpose(0, 1)[None]
    k = torch.randn(tokens, kv, d, generator=gen).transpose(0, 1)[None]
    v = torch.randn(tokens, heads + 2 * kv, d, generator=gen)[:, heads + kv:].transpose(0, 1)[None]
    prefix = tuple(torch.randn(1, kv, n_prefix, d, generator=gen) for _ in "kv") if n_prefix else None
    _on_path(attention_path, q)
    assert gemv.tree_attention_fits(q, k, v, prefix)
    got = gemv.tree_attention(q, k, v, tree, prefix, 0.37)
    want = _torch_tree_attention(q, k, v, tree, prefix, 0.37)
    exact = _torch_tree_attention(q.double(), k.double(), v.double(), tree,
                                  None if prefix is None else tuple(t.double() for t in prefix), 0.37)
    assert got.shape == (tokens, heads, d)
    # as close to the exact attention (float64) as PyTorch's own in fp32, give or take
    assert (got - exact).abs().max() <= 4 * (want - exact).abs().max() + 1e-6
    threads = torch.get_num_threads()
    try:  # each output is one thread's sums in a fixed order
        torch.set_num_threads(1)
        assert torch.equal(gemv.tree_attention(q, k, v, tree, prefix, 0.37), got)
    finally:
        torch.set_num_threads(threads)


def test_the_scoring_attention_kernel_keeps_large_scores_finite(attention_path):
    """Scores in the hundreds: a softmax shifted by anything but the row's largest score (its
    running maxima, 32 at a time) overflows to inf or loses every weight to 0."""
    gen = torch.Generator().manual_seed(5)
    tree = [(0, 70, None), (70, 75, (0, 70)), (75, 112, None)]
    q = torch.randn(1, 4, 112, 16, generator=gen) * 40
    k, v = (torch.randn(1, 2, 112, 16, generator=gen) for _ in "kv")
    _on_path(attention_path, q)
    got = gemv.tree_attention(q, k, v, tree, None, 0.5)
    exact = _torch_tree_attention(q.double(), k.double(), v.double(), tree, None, 0.5)
    assert torch.isfinite(got).all()
    assert (got - exact).abs().max() < 1e-4


def test_the_scoring_attention_runs_on_avx512_where_the_cpu_has_it(kernel):
    """Where PyTorch finds AVX-512 and the head dim is a multiple of 16, the other path runs: its
    sums go in another order, so some bits differ from the AVX2 path's (both within the tests above)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip(f"this CPU has no AVX-512 ({torch.backends.cpu.get_cpu_capability()})")
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, n, 90, 64, generator=gen) for n in (6, 2, 2))
    tree = [(0, 90, None)]
    assert gemv.wide_fits(q) and not gemv.wide_fits(q[..., :40])
    wide = gemv.tree_attention(q, k, v, tree, None, 0.125)
    narrow = gemv._tree(gemv._state["tree"], q, k, v, tree, None, 0.125, torch.get_num_threads(), False)
    assert not torch.equal(wide, narrow) and torch.allclose(wide, narrow, atol=1e-5)


@pytest.mark.parametrize("heads,d,extra", [(12, 64, 192), (3, 20, 7), (1, 8, 0)])
def test_the_rotary_kernel_equals_transformers(kernel, heads, d, extra):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    gen = torch.Generator().manual_seed(d)
    tokens = 9
    y = torch.randn(1, tokens, heads * d + extra, generator=gen)  # q and k heads, then v's columns
    cos, sin = torch.randn(1, tokens, d, generator=gen), torch.randn(1, tokens, d, generator=gen)
    x = y[..., :heads * d].view(1, tokens, heads, d).transpose(1, 2)
    want, _ = apply_rotary_pos_emb(x, x, cos, sin)
    rest = y[..., heads * d:].clone()
    assert gemv.rope_fits(y, cos, sin, heads, d)
    assert gemv.rope(y, cos, sin, heads, d) is y
    assert torch.allclose(x, want, rtol=1e-5, atol=1e-6)  # in place: x is a view of y
    assert torch.equal(y[..., heads * d:], rest)


def test_the_rotary_kernel_takes_only_what_it_computes(kernel):
    y, cos = torch.randn(1, 5, 96), torch.randn(1, 5, 16)
    assert gemv.rope_fits(y, cos, cos, 6, 16)
    assert not gemv.rope_fits(y, cos, cos, 7, 16)                        # more heads than columns
    assert not gemv.rope_fits(y, cos[..., :15], cos[..., :15], 6, 15)    # odd head dim
    assert not gemv.rope_fits(y, cos[:, :4], cos[:, :4], 6, 16)          # not one row of cos per row
    assert not gemv.rope_fits(y, cos.double(), cos.double(), 6, 16)
    assert not gemv.rope_fits(y.bfloat16(), cos, cos, 6, 16)
    assert not gemv.rope_fits(y.transpose(1, 2), cos, cos, 1, 4)         # columns not side by side


def test_prepacked_attention_rotates_in_place_only_for_scoring(kernel, tiny_model, monkeypatch):
    from pmcllama.benchmarks.base import Item
    from pmcllama.benchmarks.scoring import evaluate_items

    plain, tok = tiny_model
    model, _ = models.load_model("tiny-llama")
    prepack_linears(model, gemv=False)
    layers = model.config.num_hidden_layers
    assert sum("forward" in vars(m) for m in model.modules() if type(m).__name__ == "LlamaAttention") == layers
    calls = []
    real = gemv._state["rope"]
    monkeypatch.setitem(gemv._state, "rope", lambda *a: calls.append(a[1:4]) or real(*a))
    items = [Item(str(i), f"Question {i}: which organ makes insulin?" + " and" * i + "\nAnswer:",
                  [" the pancreas", " liver", " the spleen"], i % 3) for i in range(4)]
    got, want = (evaluate_items(m, tok, items, progress=False) for m in (model, plain))
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    d = model.config.hidden_size // heads
    assert calls and len(calls) % layers == 0
    assert set(calls) == {((heads + 2 * kv) * d, heads + kv, d)}  # q and k heads, in the fused product's rows
    for a, b in zip(got, want):
        assert a["pred"] == b["pred"]
        assert max(abs(x - y) for x, y in zip(a["loglik"], b["loglik"])) < 1e-4
    # where the kernel does not take them, transformers' rotary embedding, on the same one product
    fused = model.model.layers[0].self_attn.q_proj.fused
    products = []
    monkeypatch.setattr(fused, "product", lambda x, _p=fused.product: products.append(x.shape) or _p(x))
    monkeypatch.setattr(gemv, "rope_fits", lambda *a: False)
    calls.clear()
    again = evaluate_items(model, tok, items, progress=False)
    assert calls == [] and len(products) == 1  # one forward (the items fit in one), one q/k/v product
    assert max(abs(x - y) for a, b in zip(again, got) for x, y in zip(a["loglik"], b["loglik"])) < 1e-4
    calls.clear()  # a plain forward (generation, a cache) keeps transformers' rotary embedding
    ids = torch.arange(12).view(2, 6)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)
    assert calls == []


def test_the_scoring_attention_kernel_takes_only_what_it_computes(kernel):
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
    assert gemv.tree_attention_fits(q, k, k)
    for bad in ((q.bfloat16(), k.bfloat16(), k.bfloat16()),            # bf16
                (q[..., :12], k[..., :12], k[..., :12]),                # head dim not a multiple of 8
                (q, torch.randn(1, 3, 5, 16), torch.randn(1, 3, 5, 16)),  # heads not a multiple of kv heads
                (q.requires_grad_(), k, k),                             # needs a gradient
                (torch.randn(2, 4, 5, 16), k, k)):                      # more than one row
        assert not gemv.tree_attention_fits(*bad)
    assert not gemv.tree_attention_fits(q.detach(), k, k, (k[..., :8], k[..., :8]))  # a prefix of another head dim


def test_scoring_runs_its_attention_on_the_kernel(kernel, tiny_model, monkeypatch):
    from pmcllama.benchmarks.base import Item
    from pmcllama.benchmarks.scoring import evaluate_items

    model, tok = tiny_model
    # multi-token choices: each question's prompt is a segment its choices' tails see
    items = [Item(str(i), f"Question {i}: which organ makes insulin?" + " and" * i + "\nAnswer:",
                  [" the pancreas", " liver", " the spleen of the body"], i % 3) for i in range(5)]
    calls = []
    real = gemv._state["tree"]
    monkeypatch.setitem(gemv._state, "tree", lambda *a: calls.append(a[14]) or real(*a))
    got = evaluate_items(model, tok, items, progress=False)
    layers = model.config.num_hidden_layers
    assert calls and len(calls) % layers == 0  # every layer of every forward
    monkeypatch.setattr(gemv, "tree_attention_fits", lambda *a: False)
    want = evaluate_items(model, tok, items, progress=False)
    for a, b in zip(got, want):
        assert a["pred"] == b["pred"]
        assert max(abs(x - y) for x, y in zip(a["loglik"], b["loglik"])) < 1e-4


def test_scoring_adds_the_residual_stream_inside_the_products(kernel, tiny_model, monkeypatch):
    """A prepacked LLaMA's decoder layers add their residual stream in o_proj's and down_proj's
    products when scoring (`prepack._decoder_forward`), except the last, whose MLP runs at the
    scored positions only (`scoring._last_layer_at`, which hands the layer its forward back):
    the same logliks and predictions as the plain model."""
    from pmcllama import models, prepack
    from pmcllama.benchmarks.base import Item
    from pmcllama.benchmarks.scoring import evaluate_items
    from pmcllama.evaluate import load_for

    plain, tok = tiny_model
    fast, _ = load_for(models.resolve("tiny-llama"), "loglik", "fp32")
    layers = fast.model.layers
    assert all(vars(layer)["forward"].__func__ is prepack._decoder_forward for layer in layers)
    calls = []
    real = prepack.PackedLinear.plus
    monkeypatch.setattr(prepack.PackedLinear, "plus", lambda self, x, other: calls.append(x.shape) or real(self, x, other))
    items = [Item(str(i), f"Question {i}: which organ makes insulin?" + " and" * i + "\nAnswer:",
                  [" the pancreas", " liver", " the spleen of the body"], i % 3) for i in range(5)]
    got = evaluate_items(fast, tok, items, progress=False)
    assert calls and len(calls) % (2 * (len(layers) - 1)) == 0
    assert vars(layers[-1])["forward"].__func__ is prepack._decoder_forward
    want = evaluate_items(plain, tok, items, progress=False)
    for a, b in zip(got, want, strict=True):
        assert a["pred"] == b["pred"]
        assert max(abs(x - y) for x, y in zip(a["loglik"], b["loglik"])) < 1e-4


@pytest.mark.parametrize("lead,n", [((1,), 13), ((2, 5), 40), ((1, 9), 576), ((3,), 8)])
def test_the_pointwise_kernels_equal_pytorchs(kernel, lead, n):
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(n)
    # the gated MLP's input is half of the fused gate/up product: rows at a stride of 2n + pad
    wide = torch.randn(*lead, 2 * n + 5, generator=gen) * 5
    wide.view(-1, 2 * n + 5)[0, :3] = torch.tensor([-120.0, 120.0, 0.0])  # far out on both sides
    y = wide[..., : 2 * n]
    assert gemv.pointwise_fits(y)
    got, want = gemv.silu_mul(y), F.silu(y[..., :n]) * y[..., n:]
    assert got.shape == (*lead, n)
    assert torch.allclose(got, want, rtol=2e-6, atol=1e-6)
    x, w = y[..., n:], torch.randn(n, generator=gen)
    got, want = gemv.rms_norm(x, w, 1e-6), w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert got.shape == x.shape and got.is_contiguous()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    threads = torch.get_num_threads()
    try:  # rows are split between the threads, each computed alone: the thread count changes no bit
        torch.set_num_threads(1)
        assert torch.equal(gemv.rms_norm(x, w, 1e-6), got)
    finally:
        torch.set_num_threads(threads)


def test_the_pointwise_kernels_take_only_what_they_compute(kernel):
    x = torch.randn(4, 6, 16)
    assert gemv.pointwise_fits(x) and gemv.pointwise_fits(x[:, :, :8]) and gemv.pointwise_fits(x[:1].transpose(0, 1))
    assert not gemv.pointwise_fits(x.transpose(1, 2))            # columns not side by side
    assert not gemv.pointwise_fits(x.transpose(0, 1)[:, :2])     # rows at two strides
    assert not gemv.pointwise_fits(x.double()) and not gemv.pointwise_fits(x.requires_grad_())
    assert not gemv.pointwise_fits(torch.randn(3, 0))


def test_prepacked_models_run_their_mlp_and_norms_on_the_pointwise_kernels(kernel, tiny_model, monkeypatch):
    plain = tiny_model[0]
    model, _ = models.load_model("tiny-llama")
    prepack_linears(model, gemv=False)
    layers = model.config.num_hidden_layers
    calls = {"silu_mul": 0, "rms_norm": 0}
    for name in calls:
        real = gemv._state[name]
        monkeypatch.setitem(gemv._state, name, lambda *a, _n=name, _r=real: calls.__setitem__(_n, calls[_n] + 1) or _r(*a))
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, plain(input_ids=ids).logits
    assert calls == {"silu_mul": layers, "rms_norm": 2 * layers + 1}  # every MLP, every norm, the final one
    assert torch.allclose(got, want, atol=1e-4)
    # the modules stay where they were, by name
    assert [name for name, _ in model.named_modules()] == [name for name, _ in plain.named_modules()]


def test_only_the_pointwise_work_the_kernels_compute_goes_to_them(kernel, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, hidden_act="gelu")
    torch.manual_seed(0)
    plain = LlamaForCausalLM(config).eval()
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(plain.state_dict())
    prepack_linears(model, gemv=False)
    # a GELU MLP keeps PyTorch's forward; its RMSNorms (and attention) still go to the kernels
    hooked = {name for name, m in model.named_modules() if "forward" in m.__dict__}
    assert hooked and all(name.endswith(("norm", "self_attn")) for name in hooked)
    assert not any(name.endswith("mlp") for name in hooked)
    ids = torch.arange(20).view(2, 10)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)
        monkeypatch.setattr(gemv, "pointwise_fits", lambda x: False)  # where they do not fit: the model's own
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)
