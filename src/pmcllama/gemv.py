"""Products of a few rows for decoding on CPU, faster than oneDNN's here, and a whole decoding
step of a few rows of a LLaMA-architecture model in one C call (`step`).

A decoding step with one running request multiplies one row by every weight matrix: all the
weights are read once for little arithmetic, so the product is as fast as memory is read.
oneDNN's prepacked product (`pmcllama.prepack`) reads them at about 16 GB/s on the 2-core AMD
EPYC of the README, where `torch.sum` reads memory at 27-30 GB/s; this kernel (`gemv.c`,
AVX2 + FMA) reads them at 24-27 GB/s (`python bench/bench_prepack.py`: the Linear layers alone
at one row, 19.7 ms against oneDNN's 28.0 and an 18.7 ms floor for reading them once).
For 2 to `MAX_ROWS` (32) rows `pmcllama_gemm` multiplies three rows of the weight by four of
the input at a time and prefetches the next three while it computes, so reading the weights
overlaps the arithmetic (the Linear layers at 8 rows 37.7 ms against oneDNN's 57.0, same
script; at 32 rows about the same as oneDNN). For more rows oneDNN's blocked product is left
to do them, so `PackedLinear` keeps both: the packed weight for many rows and the plain one
for these kernels.
`step` runs every layer of a decoding step of 1 to `MAX_ROWS` rows (norms, products, rotary
embedding, cache write, attention, SiLU) in one OpenMP region over those plain weights, for
`pmcllama.serve.decoder`.
`tree_attention` is the attention of log-likelihood scoring's flattened rows (the segment tree
of `training.varlen`: each question's tokens causal, its choices' tails after its prompt, a fixed
few-shot prefix before all) in fp32, read from q, k and v where they lie. PyTorch gathers the
segments into a padded batch for its flash kernel, whose small blocks ran at 11-60 GFLOP/s on the
scoring rows of SmolLM2-135M (2-core AMD EPYC with AVX-512, `python bench/bench_attention.py`);
this kernel ran them at 79-175 GFLOP/s (2.8-9.6x less time), and whole scoring took 1.20-1.26x
less time with it, with the same predictions (same script). Where the CPU has AVX-512F it runs
an AVX-512 path (`wide_fits`: keys transposed once per call, scores as outer products), on a
2-core Intel Xeon 134-177 GFLOP/s against the AVX2 path's 99-112 on PubMedQA- and MedQA-length
rows (1.3-1.6x), about the same on MedMCQA's and MMLU's short ones; whole scoring 1.00-1.04x.
`silu_mul` and `rms_norm` are the pointwise work between a forward's products (the gated MLP's
silu(gate) * up over the fused gate/up product, LLaMA's RMSNorm), one pass over memory each
where PyTorch makes two to five; `pmcllama.prepack` routes the prepacked models' MLPs and norms
through them. Whole scoring took 1.03-1.08x less time with them on a 2-core AMD EPYC with AVX2
(family 25), with the same predictions (`python bench/bench_pointwise.py`).
`rope` is LLaMA's rotary embedding in place on the query and key columns of the fused q/k/v
product, where PyTorch makes ten passes over copies of q and k; the prepacked LLaMA attention
uses it for scoring's rows (1.03-1.06x less scoring time on a 2-core Intel Xeon with AVX-512,
`python bench/bench_pointwise.py --kernels rope`).

The kernel is compiled once with the C compiler found (`$CC`, else `cc`), into
`$XDG_CACHE_HOME/pmcllama` (default `~/.cache/pmcllama`), and runs in PyTorch's own OpenMP
threads (it links the libgomp PyTorch has loaded; with any other runtime it is not used).
Where it cannot be had (not x86-64 Linux, no AVX2/FMA, no compiler, a failed build or
self-check) `available()` is False, `reason()` says why, and oneDNN does every product.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("gemv.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared"]
# the most rows `pmcllama_gemm` and `pmcllama_step` take (the server's default batch): at 32
# rows a decoding step's products on `pmcllama_gemm` took 0.94-1.03x the time oneDNN's took,
# and the whole step in C less than the step with oneDNN's products (bench_prepack: 121.0
# against 139.2 ms); for more rows oneDNN's blocked product is left to do them
MAX_ROWS = 32

_state: dict = {}  # "fn": the loaded function, or "reason": why there is none


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pmcllama" / "kernels"


def _private(folder: Path) -> bool:
    """Whether only this user can write in `folder`: a library found there is loaded, so a folder
    others can write in (a shared temporary folder made by someone else) is never used."""
    st = folder.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _build() -> Path:
    """The shared library, built when no copy for this source and these flags exists yet
    (written to a temporary name, then renamed: processes building at once do not clash), in
    the first of the cache folder and a temporary one that exists or can be made, is writable
    by this user alone, and lets a file be created in it."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"pmcllama-kernels-{os.getuid()}"):
        target = folder / f"gemv-{key}.so"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not _private(folder):
                continue
            if target.exists():
                return target
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
            os.close(fd)
        except OSError:
            continue  # not writable: the next place
        try:
            done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {(done.stderr or done.stdout).strip()[:300]}")
            os.replace(tmp, target)
            return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"no folder writable by this user alone for the compiled kernel ({_cache_dir()})")


def _gomp_paths() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]}


def _load():
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"the kernel is for x86-64 Linux, not {sys.platform} {platform.machine()}")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise RuntimeError(f"this CPU has no AVX2 ({torch.backends.cpu.get_cpu_capability()})")
    torch.ones(64).sum()  # PyTorch's OpenMP runtime is loaded by now
    before = _gomp_paths()
    if not before:
        raise RuntimeError("PyTorch does not run on libgomp here, so the kernel would bring a second OpenMP runtime")
    lib = ctypes.CDLL(str(_build()))
    if _gomp_paths() != before:
        raise RuntimeError("the kernel loaded a second libgomp beside PyTorch's")
    kernels = {"fn": lib.pmcllama_gemv, "gemm": lib.pmcllama_gemm, "step": lib.pmcllama_step,
               "tree": lib.pmcllama_tree_attention, "silu_mul": lib.pmcllama_silu_mul, "rms_norm": lib.pmcllama_rms_norm,
               "rope": lib.pmcllama_rope}
    kernels["fn"].argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_long, ctypes.c_int]
    kernels["gemm"].argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
    kernels["step"].argtypes = ([ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_long] * 2
                                + [ctypes.c_void_p] * 2 + [ctypes.c_long] * 5 + [ctypes.c_float, ctypes.c_int])
    kernels["tree"].argtypes = ([ctypes.c_void_p, ctypes.c_long, ctypes.c_long] * 3 + [ctypes.c_void_p] * 2
                                + [ctypes.c_long] * 3 + [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
                                + [ctypes.c_long] * 3 + [ctypes.c_float, ctypes.c_int, ctypes.c_int])
    kernels["silu_mul"].argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p] + [ctypes.c_long] * 2 + [ctypes.c_int]
    kernels["rms_norm"].argtypes = ([ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
                                    + [ctypes.c_long] * 2 + [ctypes.c_int])
    kernels["rope"].argtypes = [ctypes.c_void_p] + [ctypes.c_long] * 3 + [ctypes.c_void_p] * 2 + [ctypes.c_long, ctypes.c_int]
    for fn in kernels.values():
        fn.restype = None
    kernels["step"].restype = kernels["tree"].restype = ctypes.c_int
    lib.pmcllama_wide.restype, lib.pmcllama_wide.argtypes = ctypes.c_int, []
    kernels["avx512"] = bool(lib.pmcllama_wide())  # tree attention's AVX-512 path runs here
    # self-check, on sizes that are not multiples of the kernels' tiles (8 or 3 rows of the weight,
    # 4 rows of x, 8 columns)
    gen = torch.Generator().manual_seed(0)
    for rows, n, k, bias in ((1, 37, 29, True), (1, 64, 48, False), (7, 37, 29, True), (4, 64, 48, False),
                             (2, 5, 3, True), (5, 5, 3, True)):
        w, x = torch.randn(n, k, generator=gen), torch.randn(rows, k, generator=gen)
        b = torch.randn(n, generator=gen) if bias else None
        got = _run(kernels, w, x, b, threads=1).view(rows, n)
        if not torch.allclose(got, torch.nn.functional.linear(x, w, b), atol=1e-4):
            raise RuntimeError(f"the compiled kernel failed its self-check ({rows} rows)")
    if not _step_checks(kernels["step"], gen):
        raise RuntimeError("the compiled decoding step failed its self-check")
    if not _tree_checks(kernels["tree"], gen):
        raise RuntimeError("the compiled scoring attention failed its self-check")
    if not _pointwise_checks(kernels, gen):
        raise RuntimeError("the compiled RMSNorm or gated activation failed its self-check")
    if not _rope_checks(kernels["rope"], gen):
        raise RuntimeError("the compiled rotary embedding failed its self-check")
    return kernels


class Layer(ctypes.Structure):
    """One layer's weights as `pmcllama_step` reads them (gemv.c's `pmcllama_layer`): the
    addresses of contiguous fp32 tensors (a bias may be None) and the norms' epsilons."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "in_norm", "post_norm", "qkv", "qkv_b", "o", "o_b", "gate_up", "gate_up_b", "down", "down_b")] + [
        ("in_eps", ctypes.c_float), ("post_eps", ctypes.c_float)]


def layers(specs: list[dict]):
    """The C array of `Layer`s for `specs` (dicts of the fields: tensors or None, and floats);
    the tensors must stay alive as long as the array is used."""
    def address(t):
        return None if t is None else t.data_ptr()

    return (Layer * len(specs))(*[Layer(**{k: v if k.endswith("eps") else address(v) for k, v in spec.items()})
                                  for spec in specs])


def step(table, keys: list[torch.Tensor], values: list[torch.Tensor], h: torch.Tensor, mask: torch.Tensor,
         cos: torch.Tensor, sin_signed: torch.Tensor, heads: int, inter: int, scale: float) -> None:
    """Every layer of one decoding step of 1 to `MAX_ROWS` rows, in place: `h` (rows, hidden) the
    tokens' embeddings, then the last layer's output. `table` from `layers`; `keys`/`values`
    each layer's cache, (rows, kv heads, capacity, head dim) with contiguous columns and more
    capacity than the `mask.shape[1] - 1` filled columns (this step writes the next); `mask`
    (rows, columns) contiguous longs, 0 where a column pads; `cos`/`sin_signed` (rows, head dim)
    the rotary table's rows for each row's position (gemv.c says more). Only when
    `available()`; the caller checks shapes (`pmcllama.serve.decoder` does)."""
    _step(_state["step"], table, keys, values, h, mask, cos, sin_signed, heads, inter, scale, torch.get_num_threads())


def _step(fn, table, keys, values, h, mask, cos, sin_signed, heads, inter, scale, threads) -> None:
    count = len(keys)
    rows, kv_heads, _, d = keys[0].shape
    head_strides = (ctypes.c_long * count)(*[k.stride(1) for k in keys])
    row_strides = (ctypes.c_long * count)(*[k.stride(0) for k in keys])
    kp = (ctypes.c_void_p * count)(*[k.data_ptr() for k in keys])
    vp = (ctypes.c_void_p * count)(*[v.data_ptr() for v in values])
    if fn(table, count, kp, vp, head_strides, row_strides, h.data_ptr(), mask.data_ptr(), rows, mask.shape[1] - 1,
          cos.data_ptr(), sin_signed.data_ptr(), h.shape[1], heads, kv_heads, d, inter, scale, threads):
        raise MemoryError(f"gemv.step: no memory for the scratch space of a step of {rows} rows")


def _step_checks(fn, gen: torch.Generator) -> bool:
    """`pmcllama_step` against the same layers in PyTorch, row by row, on small cases: two layers,
    grouped key/value heads, biases, padding columns, each row at its own position, head dim not
    a multiple of 8; one row, and three."""
    hidden, heads, kv, d, inter, n = 20, 4, 2, 6, 28, 5
    F = torch.nn.functional
    rnd = lambda *shape: torch.randn(*shape, generator=gen) * 0.5  # noqa: E731
    specs = [dict(in_norm=rnd(hidden) + 1, post_norm=rnd(hidden) + 1, qkv=rnd((heads + 2 * kv) * d, hidden),
                  qkv_b=rnd((heads + 2 * kv) * d), o=rnd(hidden, heads * d), o_b=None, gate_up=rnd(2 * inter, hidden),
                  gate_up_b=rnd(2 * inter), down=rnd(hidden, inter), down_b=rnd(hidden), in_eps=1e-5, post_eps=1e-6)
             for _ in range(2)]
    for mask in (torch.tensor([[0, 1, 1, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 1]])):
        rows = mask.shape[0]
        keys, values = [rnd(rows, kv, n + 3, d) for _ in specs], [rnd(rows, kv, n + 3, d) for _ in specs]
        cos, sin, h = rnd(rows, d), rnd(rows, d), rnd(rows, hidden)
        want, ref_k, ref_v = h.clone(), [k.clone() for k in keys], [v.clone() for v in values]
        for r in range(rows):
            x = want[r]
            for s, k, v in zip(specs, ref_k, ref_v):
                y = F.linear(F.rms_norm(x, (hidden,), s["in_norm"], s["in_eps"]), s["qkv"], s["qkv_b"]).view(-1, d)
                qk = y[:heads + kv] * cos[r] + y[:heads + kv].roll(d // 2, -1) * sin[r]
                k[r, :, n], v[r, :, n] = qk[heads:], y[heads + kv:]
                a = F.scaled_dot_product_attention(qk[None, :heads, None], k[r:r + 1, :, :n + 1], v[r:r + 1, :, :n + 1],
                                                   attn_mask=mask[r].bool()[None, None, None], scale=0.4, enable_gqa=True)
                x = x + F.linear(a.reshape(-1), s["o"], s["o_b"])
                g, u = F.linear(F.rms_norm(x, (hidden,), s["post_norm"], s["post_eps"]), s["gate_up"],
                                s["gate_up_b"]).split(inter)
                x = x + F.linear(F.silu(g) * u, s["down"], s["down_b"])
            want[r] = x
        _step(fn, layers(specs), keys, values, h, mask, cos, sin, heads, inter, 0.4, threads=2)
        if not (torch.allclose(h, want, atol=1e-4) and all(
                torch.allclose(a, b, atol=1e-5) for a, b in zip(keys + values, ref_k + ref_v))):
            return False
    return True


def tree_attention_fits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix=None) -> bool:
    """Whether `tree_attention` takes these: fp32 CPU tensors that need no gradient, one row,
    head dim a multiple of 8, heads a multiple of kv heads, the kernel available."""
    tensors = [query, key, value, *(prefix or ())]
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad and t.dim() == 4
                and t.shape[0] == 1 and t.shape[3] == query.shape[3] for t in tensors)
            and query.shape[3] % 8 == 0 and query.shape[1] % key.shape[1] == 0 and available())


def wide_fits(query: torch.Tensor) -> bool:
    """Whether `tree_attention` runs its AVX-512 path for `query`: a head dim that is a multiple
    of 16 on a CPU with AVX-512F (the keys transposed once per call, so that scores are outer
    products with no sum across a vector; 1.3-1.6x less attention time than the AVX2 path on
    PubMedQA- and MedQA-length rows, about the same on MedMCQA's short ones, 2-core Intel Xeon,
    `python bench/bench_attention.py`; not measured on AMD's AVX-512, whose Zen 4 runs it on
    256-bit halves)."""
    return available() and _state["avx512"] and query.shape[3] % 16 == 0


def tree_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tree, prefix=None,
                   scale: float | None = None) -> torch.Tensor:
    """Causal attention of the segments of one flattened row, as `training.varlen`'s tree
    attention computes it: query (1, heads, tokens, d), key and value (1, kv heads, tokens, d),
    `tree` its segments `(start, end, context)` (context an earlier `(start, end)` of the row
    seen in full first, or None), `prefix` None or (keys, values), (1, kv heads, P, d) each,
    seen by every segment before anything else. Returns (tokens, heads, d). Only where
    `tree_attention_fits`; rows outside every segment are left unset. On AVX-512 where
    `wide_fits`, else on AVX2."""
    return _tree(_state["tree"], query, key, value, tree, prefix, scale, torch.get_num_threads(), wide_fits(query))


def _tree(fn, query, key, value, tree, prefix, scale, threads, wide: bool) -> torch.Tensor:
    heads, tokens, d = query.shape[1:]
    q, k, v = (t if t.stride(3) == 1 else t.contiguous() for t in (query, key, value))
    pk, pv = (t.contiguous() for t in prefix) if prefix is not None else (None, None)  # one stride pair for both
    seg = torch.tensor([(a, b, *(ctx or (0, 0))) for a, b, ctx in tree], dtype=torch.long)
    out = torch.empty(tokens, heads, d)
    p_args = (pk.data_ptr(), pv.data_ptr(), pk.stride(2), pk.stride(1), pk.shape[2]) if pk is not None else (None, None, 0, 0, 0)
    if fn(q.data_ptr(), q.stride(2), q.stride(1), k.data_ptr(), k.stride(2), k.stride(1), v.data_ptr(), v.stride(2),
          v.stride(1), *p_args, seg.data_ptr(), len(tree), out.data_ptr(), heads, k.shape[1], d,
          d ** -0.5 if scale is None else scale, threads, int(wide)):
        raise MemoryError(f"gemv.tree_attention: no memory for the scratch space of {tokens} tokens")
    return out


def _tree_checks(fn, gen: torch.Generator) -> bool:
    """`pmcllama_tree_attention` against PyTorch's attention segment by segment, on small cases,
    on both paths (AVX2, and AVX-512 where the CPU has it): grouped heads, head dims of 8, 24,
    40 and 80 (the AVX2 path's column blocks are 32), and 32, 48 and 80 on the AVX-512 path (its
    column blocks 64 and the last 16 to 48, its key blocks 16 and 64), segments of 1 to 9 tokens
    and one of 70 (the running maxima of the softmax take 32 scores at a time), a context seen
    by two segments, a prefix, keys and values of different strides."""
    F = torch.nn.functional
    tree = [(0, 9, None), (9, 14, (0, 6)), (14, 15, (0, 6)), (15, 16, None), (16, 23, None), (23, 93, None),
            (93, 96, (23, 93))]
    for heads, kv, d, n_prefix, wide in ((4, 2, 24, 0, False), (3, 1, 40, 5, False), (2, 2, 8, 3, False),
                                         (6, 2, 80, 4, False), (6, 2, 80, 4, True), (4, 2, 48, 0, True),
                                         (2, 1, 32, 3, True)):
        # as the model's attention gets them: views of the fused projection (q and k rotated in
        # place, `prepack`), or q and k rotated by PyTorch (own tensors) and v such a view
        fused = torch.randn(96, heads + 2 * kv, d, generator=gen)
        q, k, v = (fused[:, a:b].transpose(0, 1)[None] for a, b in ((0, heads), (heads, heads + kv), (heads + kv, None)))
        if n_prefix:
            q, k = (torch.randn(96, n, d, generator=gen).transpose(0, 1)[None] for n in (heads, kv))
        prefix = tuple(torch.randn(1, kv, n_prefix, d, generator=gen) for _ in "kv") if n_prefix else None
        got = _tree(fn, q, k, v, tree, prefix, 0.3, 2, wide)
        for a, b, ctx in tree:
            parts = [prefix] if prefix else []
            parts += [(k[:, :, ctx[0]:ctx[1]], v[:, :, ctx[0]:ctx[1]])] if ctx else []
            parts += [(k[:, :, a:b], v[:, :, a:b])]
            keys, values = (torch.cat([p[i] for p in parts], dim=2) for i in (0, 1))
            seen = keys.shape[2] - (b - a)
            mask = torch.ones(b - a, keys.shape[2], dtype=torch.bool).tril(seen)
            want = F.scaled_dot_product_attention(q[:, :, a:b], keys, values, attn_mask=mask, scale=0.3, enable_gqa=True)
            if not torch.allclose(got[a:b], want[0].transpose(0, 1), atol=1e-5):
                return False
    return True


def pointwise_fits(x: torch.Tensor) -> bool:
    """Whether `silu_mul` and `rms_norm` take `x`: fp32 on CPU, no gradient, its rows of one
    stride with their floats side by side, the kernel available."""
    return _row_layout(x) is not None and available()


def _row_layout(x: torch.Tensor) -> tuple[int, int] | None:
    """`_rows(x)` for an fp32 CPU tensor without gradient whose last dimension is side by side,
    else None."""
    if (x.dtype == torch.float32 and x.device.type == "cpu" and not x.requires_grad and x.dim() >= 1
            and x.shape[-1] > 0 and x.stride(-1) == 1):
        return _rows(x)
    return None


def silu_mul(y: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` of a gated MLP from its fused product `y` (..., 2 n), gate's n columns
    first: (..., n), in one pass (only where `pointwise_fits(y)`)."""
    return _silu_mul(_state["silu_mul"], y, torch.get_num_threads())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * (x * rsqrt(mean(x**2, -1) + eps))`, LLaMA's RMSNorm, in one pass over `x`
    (only where `pointwise_fits(x)`; `weight` fp32 of x's last size, contiguous)."""
    return _rms_norm(_state["rms_norm"], x, weight, eps, torch.get_num_threads())


def _rows(x: torch.Tensor) -> tuple[int, int] | None:
    """(rows, row stride) of `x` as a matrix of rows of its last size, None when its leading
    dimensions do not flatten to one stride without a copy."""
    try:
        m = x.view(-1, x.shape[-1])
    except RuntimeError:
        return None
    return m.shape[0], m.stride(0)


def _silu_mul(fn, y, threads) -> torch.Tensor:
    n = y.shape[-1] // 2
    out = torch.empty(*y.shape[:-1], n)
    rows, stride = _rows(y)
    fn(y.data_ptr(), stride, out.data_ptr(), rows, n, threads)
    return out


def _rms_norm(fn, x, weight, eps, threads) -> torch.Tensor:
    out = torch.empty(x.shape)
    rows, stride = _rows(x)
    fn(x.data_ptr(), stride, weight.data_ptr(), eps, out.data_ptr(), rows, x.shape[-1], threads)
    return out


def _pointwise_checks(kernels: dict, gen: torch.Generator) -> bool:
    """`pmcllama_silu_mul` and `pmcllama_rms_norm` against PyTorch on rows of lengths that are
    not multiples of 8, read from a wider tensor (a row stride other than their length), and on
    gate values far out on both sides."""
    F = torch.nn.functional
    for rows, n in ((1, 13), (5, 40), (3, 8)):
        y = torch.randn(rows, 2 * n + 3, generator=gen) * 6
        y[0, :3] = torch.tensor([-100.0, 100.0, 0.0])
        y = y[:, : 2 * n]
        if not torch.allclose(_silu_mul(kernels["silu_mul"], y, 2), F.silu(y[:, :n]) * y[:, n:], rtol=1e-5, atol=1e-6):
            return False
        x, w = y[:, :n], torch.randn(n, generator=gen)
        want = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
        if not torch.allclose(_rms_norm(kernels["rms_norm"], x, w, 1e-5, 2), want, rtol=1e-5, atol=1e-6):
            return False
    return True


def rope_fits(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, d: int) -> bool:
    """Whether `rope` takes these: `y` as `pointwise_fits` takes it, with at least `heads` heads of
    an even `d` in a row, `cos` and `sin` fp32 of (y's rows, d) contiguous, the kernel available."""
    rows = _row_layout(y)
    return (rows is not None and d % 2 == 0 and heads * d <= y.shape[-1]
            and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
                    and t.numel() == rows[0] * d and t.shape[-1] == d for t in (cos, sin)) and available())


def rope(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """LLaMA's rotary embedding, `x * cos + rotate_half(x) * sin`, in place on the first `heads`
    heads of `d` columns of every row of `y` (the query and key columns of a fused q/k/v
    product); `cos` and `sin` one row of d per row of y. Returns y (only where `rope_fits`)."""
    return _rope(_state["rope"], y, cos, sin, heads, d, torch.get_num_threads())


def _rope(fn, y, cos, sin, heads, d, threads) -> torch.Tensor:
    rows, stride = _rows(y)
    fn(y.data_ptr(), stride, heads, d, cos.data_ptr(), sin.data_ptr(), rows, threads)
    return y


def _rope_checks(fn, gen: torch.Generator) -> bool:
    """`pmcllama_rope` against transformers' formula on head dims of 8, 20 and 64 (a half that is
    not a multiple of 8 included), read from wider rows, with the columns past the heads untouched."""
    for rows, heads, d, extra in ((3, 2, 8, 8), (4, 3, 20, 5), (5, 4, 64, 64)):
        y = torch.randn(rows, heads * d + extra, generator=gen)
        cos, sin = torch.randn(rows, d, generator=gen), torch.randn(rows, d, generator=gen)
        x = y[:, :heads * d].view(rows, heads, d).clone()
        half = d // 2
        want = x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], -1) * sin[:, None]
        rest = y[:, heads * d:].clone()
        _rope(fn, y, cos, sin, heads, d, threads=2)
        if not (torch.allclose(y[:, :heads * d].view(rows, heads, d), want, rtol=1e-5, atol=1e-5)
                and torch.equal(y[:, heads * d:], rest)):
            return False
    return True


def available() -> bool:
    """True when the kernel is built, loaded and checked (built on the first call)."""
    if not _state:
        try:
            _state.update(_load())
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _state["reason"] = str(e)
    return "fn" in _state


def reason() -> str | None:
    """Why the kernel is not available, or None when it is."""
    return None if available() else _state["reason"]


def check(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise ValueError unless `weight` (n, k) and `bias` (n or None) are what the kernel reads:
    contiguous fp32 on CPU."""
    n = weight.shape[0]
    if (weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu" or not weight.is_contiguous()
            or (bias is not None and (bias.shape != (n,) or bias.dtype != torch.float32 or not bias.is_contiguous()))):
        raise ValueError(f"gemv: the weight must be a contiguous fp32 (n, k) CPU tensor and the bias n of them, "
                         f"not {tuple(weight.shape)} {weight.dtype}")


def row_product(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`gemv` without its checks, for a weight and bias that passed `check` and an fp32 `x` of
    1 to `MAX_ROWS` rows of k (the prepacked layers call it once per product of a decoding step)."""
    return _run(_state, weight, x, bias, torch.get_num_threads())


def _run(kernels: dict, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, threads: int) -> torch.Tensor:
    n, k = weight.shape
    rows = x.numel() // k
    x = x.contiguous()
    y = torch.empty(n) if rows == 1 else torch.empty(rows, n)
    b = None if bias is None else bias.data_ptr()
    if rows == 1:
        kernels["fn"](weight.data_ptr(), x.data_ptr(), b, y.data_ptr(), n, k, threads)
    else:
        kernels["gemm"](weight.data_ptr(), x.data_ptr(), b, y.data_ptr(), rows, n, k, threads)
    return y


def gemv(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ weight.T (+ bias)`: `weight` (n, k) contiguous fp32 on CPU, `x` fp32 (..., k) of 1 to
    `MAX_ROWS` rows, `bias` n or None. Returns n floats for one row, else (rows, n); only when
    `available()`."""
    check(weight, bias)
    k = weight.shape[1]
    rows = x.numel() // k
    if x.dtype != torch.float32 or x.shape[-1] != k or not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"gemv: x must be 1 to {MAX_ROWS} fp32 rows of {k}, "
                         f"not {tuple(x.shape)} {x.dtype}")
    return row_product(weight, x, bias)
