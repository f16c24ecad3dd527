"""Faster decoding and scoring on CPU: the model's Linear layers with oneDNN's prepacked weights.

A decoding step multiplies a few rows (one per running request) by every weight matrix.
PyTorch's default CPU GEMM packs its operands into its internal layout on every call, a cost
that a few rows do not amortise; oneDNN can pack a weight once into its blocked layout and reuse it
(what `torch.compile`'s freezing pass does, without the compile), and the projections that read
the same input (q, k, v; gate, up) become one matrix each, one call instead of three or two.
`python bench/bench_prepack.py` on a 2-core AMD EPYC (AVX2, fp32), SmolLM2-135M: a decoding step
of 8 rows 145.6 ms with PyTorch's layers, 93.1 prepacked one by one, 87.8 prepacked and fused
(77.3 with the engine's own forward, `pmcllama.serve.decoder`); the same greedy tokens (the
README's Performance section has the served figures). For up to 32 rows `pmcllama.gemv`'s
kernels are as fast as oneDNN or faster (the Linear layers at one row 36.9 -> 23.4 ms, at 8 rows
57.0 -> 37.7 in the same script), so where they build the plain weights are kept beside the packed ones
for them (`prepack_linears(gemv=...)`).

Log-likelihood scoring multiplies hundreds to thousands of rows at a time, where packing on
every call costs little; there the gain is oneDNN's own kernels. On an AMD EPYC with AVX-512
(family 26) PyTorch's default fp32 GEMM ran at 180-205 GFLOP/s on 2 threads and oneDNN's
prepacked product at 440-480 (the model's shapes, 300-2048 rows; an AVX-512 FMA loop reached
about 490 there); with oneDNN held to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`) it still ran
1.13-1.27x PyTorch's. `evaluate.load_for` therefore prepacks for loglik in fp32
too, without the plain copies (`gemv=False`: no few-row products there). Where `pmcllama.gemv`'s
kernels build, the fused gated MLPs and LLaMA-style RMSNorms do their pointwise work on them
(`gemv.silu_mul`, `gemv.rms_norm`: 1.03-1.08x less scoring time on a 2-core AMD EPYC with AVX2,
`python bench/bench_pointwise.py`), and the LLaMA attention of scoring's flattened rows its
rotary embedding, in place on the fused q/k/v product (`gemv.rope`: 1.03-1.06x less scoring time
on a 2-core Intel Xeon with AVX-512, `python bench/bench_pointwise.py --kernels rope`); their
decoder layers then add the residual stream inside o_proj's and down_proj's products (oneDNN's
binary post-op, `PackedLinear.plus`) instead of in two passes of their own (1.01-1.03x less
scoring time on MedQA/MedMCQA items on that Xeon, a throwaway A/B in one process).

The swap is for inference only (the packed weights take no gradients and are not saved):
`models.load_model(..., prepack=True)` applies it where a model is loaded only to generate
(serve, chat, generate, the judge's completions, `evaluate mode=generate|cot`), and
`evaluate.load_for` where it is loaded only to score (`evaluate mode=loglik`, fp32). It
changes nothing on CUDA, for non-fp32 weights, for PEFT-wrapped models, or where this
PyTorch build has no oneDNN.
"""
from __future__ import annotations

import ctypes
import os
import sys

import torch

from pmcllama import gemv as kernel


class PackedLinear(torch.nn.Module):
    """`nn.Linear`'s forward over a weight prepacked by oneDNN (fp32, CPU, no autograd). With
    `plain`, the unpacked weight is kept too and an input of 1 to `gemv.MAX_ROWS` rows goes to
    `pmcllama.gemv`'s kernels instead, which are faster than oneDNN for that few rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int, plain: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
        self.bias = None if bias is None else bias.detach()
        # (contiguous: the same memory for a weight that is, so a tied one stays shared;
        # `prepack_linears` then copies it out of the safetensors file)
        self.plain = weight.detach().contiguous() if plain else None
        if plain:
            kernel.check(self.plain, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None and x.numel() <= kernel.MAX_ROWS * self.in_features:
            return kernel.row_product(self.plain, x, self.bias).view(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def plus(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """forward(x) + other, the addition in oneDNN's product (its binary post-op) instead of
        a pass of its own over both: a decoder layer's residual stream over scoring's rows."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", gemv=True" if self.plain is not None else ""))


class _Fused:
    """One packed matrix for sibling Linear layers that read the same input (a layer's q, k and v
    projections; its MLP's gate and up projections): one call instead of three or two, which
    one-row decoding steps pay for in per-call cost more than in arithmetic. The output is kept
    until every sibling has taken its columns, then let go."""

    def __init__(self, linears: list[torch.nn.Linear], batch_hint: int, plain: bool):
        bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
        self.product = PackedLinear(torch.cat([lin.weight for lin in linears]), bias, batch_hint, plain)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.taken: set[int] = set()
        self.count = len(linears)

    def hold(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep `y`, this product of `x` computed by a caller, for the siblings' columns."""
        self.x, self.y, self.taken = x, y, set()

    def columns(self, x: torch.Tensor, index: int, start: int, stop: int) -> torch.Tensor:
        if x is not self.x or index in self.taken:  # a new input (the reference held keeps `is` exact)
            self.x, self.taken = x, set()
            self.y = self.product(x)
        out = self.y[..., start:stop]
        self.taken.add(index)
        if len(self.taken) == self.count:
            self.x = self.y = None
        return out


class FusedLinear(torch.nn.Module):
    """One of fused siblings: its columns of their shared prepacked product (`_Fused`)."""

    def __init__(self, fused: _Fused, index: int, start: int, linear: torch.nn.Linear):
        super().__init__()
        self.fused, self.index, self.start = fused, index, start
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.columns(x, self.index, self.start, self.start + self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self.fused.count}"


# sibling projections of the LLaMA family that always read the same input
FUSE = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _fuse_siblings(parent: torch.nn.Module, batch_hint: int, plain: bool) -> int:
    swapped = 0
    for names in FUSE:
        linears = [getattr(parent, n, None) for n in names]
        if not all(type(lin) is torch.nn.Linear for lin in linears):
            continue
        if len({lin.in_features for lin in linears}) > 1 or len({lin.bias is None for lin in linears}) > 1:
            continue
        fused, start = _Fused(linears, batch_hint, plain), 0
        for i, (name, lin) in enumerate(zip(names, linears)):
            setattr(parent, name, FusedLinear(fused, i, start, lin))
            start += lin.out_features
            swapped += 1
    return swapped


# RMSNorms that compute weight * (x * rsqrt(mean(x^2) + eps)) in fp32 (Gemma's 1 + weight does not)
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
SILUS = ("SiLU", "SiLUActivation")


def _gated(mlp, x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of a gated MLP whose gate and up projections are fused, in one pass over
    their product (`gemv.silu_mul`) instead of PyTorch's two over a strided half of it."""
    y, n = mlp.gate_proj.fused.product(x), mlp.gate_proj.out_features
    return kernel.silu_mul(y) if kernel.pointwise_fits(y) else mlp.act_fn(y[..., :n]) * y[..., n:]


def _gated_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A gated MLP whose gate and up projections are fused (`_gated`), then its down projection."""
    return self.down_proj(_gated(self, x))


def _rms_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm in one pass over x (`gemv.rms_norm`) where it fits, else its own."""
    if kernel.pointwise_fits(x) and self.weight.dtype == torch.float32:
        return kernel.rms_norm(x, self.weight, self.variance_epsilon)
    return type(self).forward(self, x)


# attention classes whose forward is LLaMA's: q/k/v projections, rotary embedding of q and k by
# the model's (cos, sin), the attention interface, o_proj (no q/k norms, no sliding window)
ATTENTIONS = ("LlamaAttention",)


def _attend(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None,
            **kwargs):
    """The attention of scoring's flattened rows (`training.varlen`'s tree attention, no cache)
    before o_proj, (..., heads x d) and the weights, with the rotary embedding in place on the q
    and k columns of the fused q/k/v product (`gemv.rope`) instead of PyTorch's ten passes over
    separate copies of q and k; None for anything else, or what the kernel does not take (the
    product, when made, is then held for the class's forward: it is not made twice)."""
    from pmcllama.training import varlen

    d, fused = self.head_dim, self.q_proj.fused
    heads, kv = self.q_proj.out_features // d, self.k_proj.out_features // d
    if (cache is None and position_embeddings is not None and "pmcllama_tree" in kwargs
            and self.config._attn_implementation == varlen.NAME):
        cos, sin = position_embeddings
        y = fused.product(hidden_states)
        if kernel.rope_fits(y, cos, sin, heads + kv, d):
            kernel.rope(y, cos, sin, heads + kv, d)
            shape = (*hidden_states.shape[:-1], -1, d)
            q, k, v = (y[..., a * d:b * d].view(shape).transpose(1, 2)
                       for a, b in ((0, heads), (heads, heads + kv), (heads + kv, heads + 2 * kv)))
            out, weights = varlen.attention(self, q, k, v, attention_mask, scaling=self.scaling,
                                            dropout=self.attention_dropout if self.training else 0.0, **kwargs)
            return out.reshape(*hidden_states.shape[:-1], -1).contiguous(), weights
        fused.hold(hidden_states, y)
    return None


def _attention_forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                       cache=None, **kwargs):
    """The model's attention, scoring's flattened rows through `_attend`, anything else (or what
    it does not take) through the class's own forward."""
    got = _attend(self, hidden_states, position_embeddings, attention_mask, cache, **kwargs)
    if got is not None:
        return self.o_proj(got[0]), got[1]
    return type(self).forward(self, hidden_states, position_embeddings, attention_mask, cache, **kwargs)


# decoder layers whose forward is x + attn(norm(x)), then h + mlp(norm(h)), nothing else
DECODER_LAYERS = ("LlamaDecoderLayer",)


def _decoder_forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A decoder layer over scoring's flattened rows with both residual additions in the
    products before them (o_proj's and down_proj's, `PackedLinear.plus`) instead of two passes
    over the residual stream; anything else, or an attention `_attend` does not take, goes to
    the class's own forward."""
    attn, mlp = self.self_attn, self.mlp
    if not args and "pmcllama_tree" in kwargs:
        normed = self.input_layernorm(hidden_states)
        got = _attend(attn, normed, **kwargs)
        if got is None:  # the class's attention, on the product `_attend` held
            h = hidden_states + type(attn).forward(attn, normed, **kwargs)[0]
        else:
            h = attn.o_proj.plus(got[0], hidden_states)
        return mlp.down_proj.plus(_gated(mlp, self.post_attention_layernorm(h)), h)
    return type(self).forward(self, hidden_states, *args, **kwargs)


def _fuse_pointwise(module: torch.nn.Module) -> None:
    """Route a fused gated MLP (gate then up, one `_Fused`, SiLU), a LLaMA-style RMSNorm or a
    LLaMA attention with fused q/k/v through `pmcllama.gemv`'s pointwise kernels (the instance's
    forward; the modules, their weights and names stay)."""
    gate, up = getattr(module, "gate_proj", None), getattr(module, "up_proj", None)
    if (isinstance(gate, FusedLinear) and isinstance(up, FusedLinear) and gate.fused is up.fused and gate.fused.count == 2
            and (gate.index, gate.start, up.start) == (0, 0, gate.out_features) and gate.out_features == up.out_features
            and type(getattr(module, "act_fn", None)).__name__ in SILUS and hasattr(module, "down_proj")):
        module.forward = _gated_forward.__get__(module)
    elif type(module).__name__ in RMS_NORMS and isinstance(getattr(module, "variance_epsilon", None), float):
        module.forward = _rms_forward.__get__(module)
    elif type(module).__name__ in ATTENTIONS and _fused_qkv(module):
        module.forward = _attention_forward.__get__(module)


def _fuse_residuals(module: torch.nn.Module) -> None:
    """Route a LLaMA decoder layer whose attention and MLP `_fuse_pointwise` routed, o_proj and
    down_proj prepacked, through `_decoder_forward` (the instance's forward)."""
    attn, mlp = getattr(module, "self_attn", None), getattr(module, "mlp", None)

    def routed(m, fn) -> bool:
        return getattr(vars(m).get("forward") if m is not None else None, "__func__", None) is fn

    if (type(module).__name__ in DECODER_LAYERS and routed(attn, _attention_forward) and routed(mlp, _gated_forward)
            and type(getattr(attn, "o_proj", None)) is PackedLinear and type(getattr(mlp, "down_proj", None)) is PackedLinear):
        module.forward = _decoder_forward.__get__(module)


def _fused_qkv(module: torch.nn.Module) -> bool:
    """Whether q, k and v are one `_Fused` in that order, heads of `head_dim` side by side."""
    q, k, v = (getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj"))
    d = getattr(module, "head_dim", None)
    return (all(isinstance(p, FusedLinear) for p in (q, k, v)) and q.fused is k.fused is v.fused
            and q.fused.count == 3 and (q.start, k.start, v.start) == (0, q.out_features, q.out_features + k.out_features)
            and isinstance(d, int) and all(p.out_features % d == 0 for p in (q, k, v))
            and hasattr(module, "o_proj") and hasattr(module, "scaling"))


def can_prepack(model: torch.nn.Module) -> bool:
    """True for an fp32 model on CPU, not PEFT-wrapped, with oneDNN's linear ops present."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if any(type(m).__module__.startswith("peft") for m in model.modules()):
        return False
    weights = [m.weight for m in model.modules() if type(m) is torch.nn.Linear]
    return bool(weights) and all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)


def _gemv_fits(model: torch.nn.Module) -> bool:
    """Whether a plain copy of the Linear weights (for `pmcllama.gemv`) takes at most a quarter
    of the memory available now; where it would take more, oneDNN does every product."""
    nbytes = sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return False
    return nbytes <= available // 4


def prepack_linears(model: torch.nn.Module, batch_hint: int = 8, fuse: bool = True, gemv: bool = True) -> int:
    """Swap every plain `nn.Linear` of `model` for a `PackedLinear` (siblings that read the same
    input, `FUSE`, for `FusedLinear`s of one packed matrix unless `fuse=False`), in place, when
    `can_prepack(model)`. Returns how many were swapped (0 when not applicable). A weight tied
    to another module (the output layer tied to the embeddings) stays where it is tied; the
    packed copy is extra memory for that one matrix only.

    With `gemv` (the default), where `pmcllama.gemv`'s kernels are available and the plain
    weights fit (`_gemv_fits`), they are kept beside the packed ones and products of up to
    `gemv.MAX_ROWS` rows (decoding that many requests) run on the kernels: the Linear weights
    then take twice the memory.

    Where those kernels are available, the fused gated MLPs and LLaMA-style RMSNorms run their
    pointwise work on them too, and LLaMA attentions with fused q/k/v their rotary embedding when
    scoring (`_fuse_pointwise`): one pass over memory instead of PyTorch's several (on scoring's
    long rows, much of the time left outside the products and attention); LLaMA decoder layers
    so routed add their residual stream inside the products when scoring (`_fuse_residuals`)."""
    if not can_prepack(model):
        return 0
    use_gemv = gemv and _gemv_fits(model) and kernel.available()
    swapped = 0
    with torch.no_grad():
        for parent in list(model.modules()):
            swapped += _fuse_siblings(parent, batch_hint, use_gemv) if fuse else 0
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(parent, name, PackedLinear(child.weight, child.bias, batch_hint, use_gemv))
                    swapped += 1
        if kernel.available():
            for module in model.modules():
                _fuse_pointwise(module)
            for module in model.modules():  # after their attention and MLP
                _fuse_residuals(module)
        # the weights left (embeddings, norms, the plain weights kept for the kernel) are views of
        # the memory-mapped safetensors file, which keeps every page the packing read mapped: copy
        # them out so the mapping goes (SmolLM2-135M: 1.43 -> 1.03 GB resident after packing)
        kept = [m.plain for m in model.modules() if isinstance(m, PackedLinear) and m.plain is not None]
        kept += [m.fused.product.plain for m in model.modules() if isinstance(m, FusedLinear) and m.index == 0
                 and m.fused.product.plain is not None]
        copies: dict = {}  # one copy of what several share (the output layer tied to the embeddings)
        for t in list(model.parameters()) + list(model.buffers()) + kept:
            key = (t.data_ptr(), t.shape, t.stride())
            t.data = copies[key] if key in copies else copies.setdefault(key, t.data.clone())
    return swapped


# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (64-bit): bigger blocks are always mapped afresh
TRIM_THRESHOLD = 1 << 30
_heap: dict = {}


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MB in the heap for the next allocation instead of
    handing them back to the system: a CPU forward over scoring's long rows allocates every
    activation afresh, and memory handed back is page-faulted in again on the next forward
    (SmolLM2-135M scoring 30 PubMedQA items three times in one process: 1.6 million page faults,
    32,000 with this, and 1.07x less time; MedQA items 1.05x, the same predictions; 2-core Intel
    Xeon, `python bench/bench_malloc.py`). Process-wide and once: the heap then holds
    up to scoring's peak of freed memory (returned to the system above 1 GB free at its top).
    Not done where the user has set malloc's own variables (MALLOC_*_, glibc.malloc tunables),
    or off glibc. Returns whether the setting is in force."""
    if "done" not in _heap:
        _heap["done"] = _set_malloc()
    return _heap["done"]


def _set_malloc() -> bool:
    if sys.platform != "linux" or any(k.startswith("MALLOC_") for k in os.environ) \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing)
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
