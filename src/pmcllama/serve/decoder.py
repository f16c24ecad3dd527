"""A LLaMA-architecture forward pass with few Python steps, for the generation engine.

A decoding step of a small model on a CPU spends as much time in transformers' per-operation
Python (module calls, mask building, cache bookkeeping, rotary embeddings recomputed per step)
as in its matrix products. `Decoder` runs the same computation over the same weights with
fewer operations: the rotary table is computed once and applied to queries and keys in one
expression, the projections that read the same input are one call when `pmcllama.prepack`
fused them, the attention reads grouped key/value heads as they are (SDPA's `enable_gqa`),
and the KV cache (`SlabCache`) is a preallocated slab per layer that a step writes one column
into instead of concatenating the whole cache anew. A decoding step of 1 to 32 rows (running
requests) on a prepacked model whose layers keep their plain weights for `pmcllama.gemv` runs
every layer in one call of that module's C step (`gemv.step`: no Python and no PyTorch
dispatch between the products). Its logits equal transformers' within float rounding (tests:
1e-4).

`Decoder.supports(model)` says which models it runs: `LlamaForCausalLM` (LLaMA 1-3, SmolLM,
TinyLlama, the stage outputs) with SiLU MLPs and a rotary embedding that depends only on the
position, under PyTorch 2.5 or later, on one device without accelerate's dispatch hooks.
Anything else runs through the model's own forward.
"""
from __future__ import annotations

import torch

from pmcllama import gemv

# scaled_dot_product_attention(enable_gqa=...) came with PyTorch 2.5
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class SlabLayer:
    """One layer's keys and values, (rows, kv heads, capacity, head dim), of which the first
    `n` columns are filled. `keys`/`values` are those columns; assigning them (the engine's
    joins and cuts) replaces the slab."""

    __slots__ = ("k", "v", "n")
    SPARE = 64  # columns allocated ahead when a slab grows

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.n = 0

    @property
    def keys(self) -> torch.Tensor:
        return self.k[:, :, :self.n]

    @keys.setter
    def keys(self, t: torch.Tensor) -> None:
        self.k, self.n = t, t.shape[2]

    @property
    def values(self) -> torch.Tensor:
        return self.v[:, :, :self.n]

    @values.setter
    def values(self, t: torch.Tensor) -> None:
        self.v, self.n = t, t.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k`, `v` (rows, kv heads, T, head dim) after the filled columns; the filled
        keys and values after the write."""
        t = k.shape[2]
        if self.k is None or self.n + t > self.k.shape[2]:
            self._grow(k, t)
        self.k[:, :, self.n:self.n + t] = k
        self.v[:, :, self.n:self.n + t] = v
        self.n += t
        return self.keys, self.values

    def make_room(self) -> None:
        """Room for one more column in a slab whose columns are contiguous, the values laid out
        as the keys (what the C step writes into); a slab the engine's cut left as a view
        without room is copied."""
        k, v = self.k, self.v
        if (self.n + 1 > k.shape[2] or k.stride(3) != 1 or k.stride(2) != k.shape[3]
                or (k.shape, k.stride()) != (v.shape, v.stride())):
            self._grow(k, 1)

    def _grow(self, like: torch.Tensor, t: int) -> None:
        shape = (like.shape[0], like.shape[1], self.n + t + self.SPARE, like.shape[3])
        new_k, new_v = like.new_empty(shape), like.new_empty(shape)
        if self.n:
            new_k[:, :, :self.n] = self.keys
            new_v[:, :, :self.n] = self.values
        self.k, self.v = new_k, new_v


class SlabCache:
    """The KV cache of a `Decoder`, with the parts of `DynamicCache`'s interface the engine
    uses: `layers[i].keys/values`, `update` and `batch_select_indices`."""

    def __init__(self, n_layers: int):
        self.layers = [SlabLayer() for _ in range(n_layers)]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int):
        return self.layers[layer].append(k, v)

    def batch_select_indices(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (in that order, repeats allowed)."""
        for layer in self.layers:
            if layer.k is not None:
                layer.k, layer.v = layer.k.index_select(0, index), layer.v.index_select(0, index)


class Decoder:
    """The forward pass of a supported model (`supports`), from its own modules' weights."""

    def __init__(self, model, context: int):
        cfg = model.config
        inner = model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.embed, self.lm_head = inner.embed_tokens, model.lm_head
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.layers = [_Layer(layer) for layer in inner.layers[:cfg.num_hidden_layers]]
        self.rotary = inner.rotary_emb
        self._rotary_table(min(context, 4096))  # grown when a longer sequence comes
        self.inter = cfg.intermediate_size
        self.c_layers = self._c_layers()

    @staticmethod
    def supports(model) -> bool:
        cfg = getattr(model, "config", None)
        if type(model).__name__ != "LlamaForCausalLM" or cfg is None or not _SDPA_GQA:
            return False
        rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
        if rope.get("rope_type", rope.get("type", "default")) == "dynamic":
            return False  # its frequencies change with the sequence length
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
            return False
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "rotary_emb") or not all(
                hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in inner.layers):
            return False
        # one device, and no accelerate hooks (device_map dispatch, offloading), which act on the
        # decoder layers' forwards that this one does not call
        return len({p.device for p in model.parameters()}) == 1 and not any(
            hasattr(m, "_hf_hook") for m in model.modules())

    @torch.no_grad()
    def _rotary_table(self, positions: int) -> None:
        """cos and sin of the rotary embedding for `positions` positions, (positions, head dim)
        each, in the model's dtype, from the model's own rotary module (so any position-only
        rope type: default, linear, llama3, yarn). `x * cos + rotate_half(x) * sin` is
        computed as `x * cos + roll(x, half) * sin_signed`: one operation fewer."""
        weight = self.embed.weight
        cos, sin = self.rotary(weight, torch.arange(positions, device=weight.device)[None])
        half = self.head_dim // 2
        self.cos, self.sin_signed = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

    def _c_layers(self):
        """The layers' weights for `pmcllama.gemv.step` (every layer of a decoding step in one C
        call), or None where it does not apply: the kernels are not in use (the prepacked layers
        keep no plain weights for them), or the model is not fp32."""
        from pmcllama.prepack import PackedLinear

        products = [(layer._qkv, layer.o, layer._gate_up, layer.down) for layer in self.layers]
        if not all(isinstance(p, PackedLinear) and p.plain is not None for ps in products for p in ps):
            return None
        hidden, q_dim, kv_dim = self.embed.weight.shape[1], self.heads * self.head_dim, self.kv_heads * self.head_dim
        if any((qkv.plain.shape, o.plain.shape, gate_up.plain.shape, down.plain.shape) != (
                (q_dim + 2 * kv_dim, hidden), (hidden, q_dim), (2 * self.inter, hidden), (hidden, self.inter))
               for qkv, o, gate_up, down in products):
            return None
        tensors = [self.embed.weight, self.norm[0]] + [w for layer in self.layers for w in (layer.in_norm, layer.post_norm)]
        if (self.heads % self.kv_heads or self.head_dim % 2
                or not all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors)):
            return None
        return gemv.layers([dict(
            in_norm=layer.in_norm, post_norm=layer.post_norm, in_eps=layer.in_eps, post_eps=layer.post_eps,
            qkv=qkv.plain, qkv_b=qkv.bias, o=o.plain, o_b=o.bias, gate_up=gate_up.plain, gate_up_b=gate_up.bias,
            down=down.plain, down_b=down.bias) for layer, (qkv, o, gate_up, down) in zip(self.layers, products)])

    def _c_step(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                cache: SlabCache) -> tuple[torch.Tensor, SlabCache]:
        """`__call__` for one new token per row, every layer in one C call (`gemv.step`)."""
        h = self.embed(ids).reshape(ids.shape[0], -1).contiguous()
        positions = positions.reshape(-1)
        for layer in cache.layers:
            layer.make_room()
        gemv.step(self.c_layers, [layer.k for layer in cache.layers], [layer.v for layer in cache.layers], h,
                  mask.to(torch.long).contiguous(), self.cos[positions], self.sin_signed[positions],
                  self.heads, self.inter, self.scale)
        for layer in cache.layers:
            layer.n += 1
        return self.lm_head(_rms_norm(h, *self.norm)).float(), cache

    def new_cache(self) -> SlabCache:
        return SlabCache(len(self.layers))

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: SlabCache) -> tuple[torch.Tensor, SlabCache]:
        """Logits of each row's last token, (rows, vocab) in fp32, for `ids` (rows, T) at
        `positions` (rows, T); `mask` (rows, cached + T) is 1 where a real token is."""
        rows, t = ids.shape
        if mask.shape[1] > self.cos.shape[0]:  # a position past the table (positions < columns)
            self._rotary_table(max(mask.shape[1], 2 * self.cos.shape[0]))
        if (t == 1 and self.c_layers is not None and rows <= gemv.MAX_ROWS and mask.shape[0] == positions.numel() == rows
                and all(layer.k is not None and layer.k.shape[0] == rows and layer.n == mask.shape[1] - 1
                        for layer in cache.layers)):
            return self._c_step(ids, mask, positions, cache)
        h = self.embed(ids)
        cos, sin = self.cos[positions][:, None], self.sin_signed[positions][:, None]  # (rows, 1, T, D)
        keep = mask[:, None, None, :].bool()  # (rows, 1, 1, columns): the real tokens
        if t > 1:  # causal within the new tokens (a padding query sees nothing: SDPA gives it zeros)
            cols = mask.shape[1]
            keep = keep & torch.ones((t, cols), dtype=torch.bool, device=mask.device).tril(cols - t)
        bias = torch.zeros(keep.shape, dtype=h.dtype, device=h.device).masked_fill_(~keep, float("-inf"))
        heads = self.heads + self.kv_heads
        for i, layer in enumerate(self.layers):
            x = _rms_norm(h, layer.in_norm, layer.in_eps)
            qk, v = layer.qkv(x)
            qk = qk.view(rows, t, heads, self.head_dim).transpose(1, 2)  # (rows, heads, T, D)
            qk = qk * cos + qk.roll(self.head_dim // 2, -1) * sin
            keys, values = cache.update(qk[:, self.heads:], v.view(rows, t, self.kv_heads, self.head_dim).transpose(1, 2), i)
            a = torch.nn.functional.scaled_dot_product_attention(
                qk[:, :self.heads], keys, values, attn_mask=bias, scale=self.scale, enable_gqa=True)
            h = h + layer.o(a.transpose(1, 2).reshape(rows, t, -1))
            x = _rms_norm(h, layer.post_norm, layer.post_eps)
            gate, up = layer.gate_up(x)
            h = h + layer.down(torch.nn.functional.silu(gate) * up)
        last = _rms_norm(h[:, -1], *self.norm)
        return self.lm_head(last).float(), cache


class _Layer:
    """One decoder layer's weights and projections, the fused ones called once."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.in_norm, self.in_eps = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.post_norm, self.post_eps = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        self.o, self.down = attn.o_proj, mlp.down_proj
        self._qkv = _product(attn.q_proj, attn.k_proj, attn.v_proj)
        self._gate_up = _product(mlp.gate_proj, mlp.up_proj)
        self.q_proj, self.k_proj, self.v_proj = attn.q_proj, attn.k_proj, attn.v_proj
        self.gate_proj, self.up_proj = mlp.gate_proj, mlp.up_proj
        # where the fused products split (Linear and FusedLinear both know their out_features)
        self.qk = attn.q_proj.out_features + attn.k_proj.out_features
        self.gate = mlp.gate_proj.out_features

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries and keys side by side (their rotary embedding is one operation), the values."""
        if self._qkv is None:
            return torch.cat([self.q_proj(x), self.k_proj(x)], dim=-1), self.v_proj(x)
        y = self._qkv(x)
        return y[..., :self.qk], y[..., self.qk:]

    def gate_up(self, x: torch.Tensor):
        if self._gate_up is None:
            return self.gate_proj(x), self.up_proj(x)
        y = self._gate_up(x)
        return y[..., :self.gate], y[..., self.gate:]


def _product(*linears):
    """The one packed product of `linears` when `pmcllama.prepack` fused exactly them, else None."""
    from pmcllama.prepack import FusedLinear

    if not all(isinstance(lin, FusedLinear) for lin in linears):
        return None
    fused = linears[0].fused
    if fused.count != len(linears) or any(lin.fused is not fused or lin.index != i for i, lin in enumerate(linears)):
        return None
    return fused.product


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's computation (in fp32, cast back before the weight). In fp32 that is
    PyTorch's own fused `rms_norm` (one call instead of eight: 23 against 41 us a row here)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)
    y = x.float()
    return weight * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
