"""Export a model to one GGUF file that llama.cpp runs (`pmcllama export MODEL --out FILE.gguf`).

LLaMA family only (LlamaForCausalLM: SmolLM2, tiny-llama, PMC-LLaMA). Tensors are named and
laid out the way llama.cpp's own converter (convert_hf_to_gguf.py) does: Q and K rows are
permuted from Hugging Face's rotate-half order to llama.cpp's interleaved rope order, 1-D
tensors (norms) stay F32, and a tied output head is not written (llama.cpp reuses
token_embd). The tokenizer goes in as byte-level BPE (`gpt2`) or SentencePiece BPE (`llama`);
see `pmcllama.export_vocab`. Mistral checkpoints share Llama's layout and are written the same way.

dtypes: f32, f16, bf16, q8_0 and q4_0 (through gguf.quants); Q8_0/Q4_0 rows must be whole
blocks of 32 (else F16, said), and q4_0 keeps the embeddings / output head at Q8_0.

Tensors are streamed: the header and tensor table are written first, then each tensor is read
from the safetensors files (plain reads, no memory map), converted and written, so only one
tensor is in memory at a time.
The file is written under a temporary name beside the target and renamed at the end; an
existing file is replaced only with `force`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pmcllama.card import model_name
from pmcllama.errors import UserError
from pmcllama.export_vocab import add_tokenizer

DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
Q_BLOCK = 32  # Q8_0 and Q4_0 quantise rows in blocks of 32 values

# Hugging Face Llama tensor name (after "model.layers.N.") -> llama.cpp name (after "blk.N.")
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str | None:
    """The llama.cpp tensor name for a Hugging Face Llama tensor; None for buffers llama.cpp skips."""
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    raise UserError(f"tensor {hf_name!r} has no llama.cpp name (not a plain Llama checkpoint)")


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's half-split rotary rows -> llama.cpp's pairwise layout (per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LAYOUT_LIKE_LLAMA = ("LlamaForCausalLM", "MistralForCausalLM")
NOT_YET = {"Qwen2ForCausalLM": "q/k/v biases, NEOX rope and Qwen2's own pre-tokenizer are not written yet"}


def read_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    if archs[0] in NOT_YET:
        raise UserError(f"{archs[0]} is not exported: {NOT_YET[archs[0]]} (LlamaForCausalLM and "
                        "MistralForCausalLM are)", folder / "config.json")
    if archs[0] not in LAYOUT_LIKE_LLAMA:
        raise UserError(f"export supports the LLaMA family (LlamaForCausalLM, MistralForCausalLM) only, "
                        f"not {archs[0]}", folder / "config.json")
    return config


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise UserError(f"rope scaling {rope.get('rope_type') or config.get('rope_scaling')!r} is not exported yet")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def add_hparams(writer, config: dict, name: str, file_type: int) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _target_type(name: str, shape: tuple[int, ...], dtype: str):
    """(GGML type, note) for one tensor: 1-D in F32; Q8_0/Q4_0 need rows in whole blocks of 32;
    with q4_0 the embeddings / output head stay Q8_0 (as llama.cpp's own quantiser keeps the head
    at higher precision: it is the tensor 4 bits hurt most)."""
    from gguf import GGMLQuantizationType as Q

    if len(shape) == 1 or dtype == "f32":
        return Q.F32, None
    qtype = Q[dtype.upper()]
    if qtype in (Q.Q8_0, Q.Q4_0) and shape[-1] % Q_BLOCK:
        return Q.F16, f"rows of {shape[-1]} are not a multiple of {Q_BLOCK}: F16 instead of {qtype.name}"
    if qtype == Q.Q4_0 and name in ("token_embd.weight", "output.weight"):
        return Q.Q8_0, "the embeddings / output head: Q8_0 instead of Q4_0"
    return qtype, None


def tensor_plan(folder: Path, config: dict, dtype: str) -> list[dict]:
    """Every tensor to write, in order, with its file, names, shape and GGML type (nothing loaded)."""
    plan = []
    tied = config.get("tie_word_embeddings", False)
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as fh:
            header, _ = _header(fh, file)
        for hf in sorted(k for k in header if k != "__metadata__"):
            name = gguf_name(hf)
            if name is None or (tied and name == "output.weight"):
                continue
            shape = tuple(header[hf]["shape"])
            qtype, note = _target_type(name, shape, dtype)
            plan.append({"file": file, "hf": hf, "name": name, "shape": shape, "type": qtype, "note": note})
    if not any(p["name"] == "token_embd.weight" for p in plan):
        raise UserError("no model.embed_tokens.weight in the safetensors files", folder)
    return plan


def _nbytes(item: dict) -> tuple[tuple[int, ...], np.dtype, int]:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quant_shape_to_byte_shape

    if item["type"] not in (Q.F32, Q.F16):  # BF16, Q8_0, Q4_0: written as bytes
        shape = quant_shape_to_byte_shape(item["shape"], item["type"])
        return shape, np.dtype(np.uint8), int(np.prod(shape))
    dt = np.dtype(np.float32 if item["type"] == Q.F32 else np.float16)
    return item["shape"], dt, int(np.prod(item["shape"])) * dt.itemsize


def convert_tensor(item: dict, data: np.ndarray, config: dict) -> np.ndarray:
    """Permute Q/K for llama.cpp's rope, then cast or quantise to the planned type."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    heads = config["num_attention_heads"]
    if item["name"].endswith("attn_q.weight"):
        data = permute_rope(data, heads)
    elif item["name"].endswith("attn_k.weight"):
        data = permute_rope(data, config.get("num_key_value_heads") or heads)
    if item["type"] not in (Q.F32, Q.F16):
        return quantize(data, item["type"])
    return np.ascontiguousarray(data, dtype=np.float32 if item["type"] == Q.F32 else np.float16)


SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def _header(fh, file: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header (the tensors' dtypes, shapes, offsets) and where its data
    starts, read without a tensor library (safetensors' own reader would import torch)."""
    n = int.from_bytes(fh.read(8), "little")
    try:
        if n > 100_000_000:  # safetensors' own limit on the header
            raise ValueError
        return json.loads(fh.read(n)), 8 + n
    except (ValueError, UnicodeDecodeError):
        raise UserError("not a safetensors file (its header is not JSON)", file) from None


def _read_tensor(fh, header: dict, start: int, name: str) -> np.ndarray:
    """One tensor as float32, read with plain file reads (no memory map, so the pages of the
    tensors already written do not stay resident: peak memory is about one tensor)."""
    meta = header[name]
    if meta["dtype"] not in SAFETENSORS_DTYPES:
        raise UserError(f"tensor {name!r} has dtype {meta['dtype']}; floating-point weights are exported")
    begin, end = meta["data_offsets"]
    fh.seek(start + begin)
    data = np.frombuffer(fh.read(end - begin), dtype=SAFETENSORS_DTYPES[meta["dtype"]]).reshape(meta["shape"])
    if meta["dtype"] == "BF16":  # bfloat16 is the high half of a float32
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False)


def _stream(plan: list[dict]) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield (plan item, float32 array) one tensor at a time, each file opened once."""
    for file in dict.fromkeys(p["file"] for p in plan):
        with open(file, "rb") as fh:
            header, start = _header(fh, file)
            for item in (p for p in plan if p["file"] == file):
                yield item, _read_tensor(fh, header, start, item["hf"])


def _check_destination(out: Path, force: bool) -> None:
    if out.suffix != ".gguf":
        raise UserError("the output file must end in .gguf", out)
    if out.is_dir():
        raise UserError("the output is a folder, not a file", out)
    if out.exists() and not force:
        raise UserError("output file exists (pass --force to replace it)", out)
    if not out.parent.is_dir():
        raise UserError("the output's folder does not exist", out.parent)
    if not os.access(out.parent, os.W_OK):
        raise UserError("the output's folder is not writable", out.parent)


def export_gguf(model: str | Path, out: Path, dtype: str = "f32", force: bool = False,
                say: Callable[[str], None] = print) -> Path:
    """Write MODEL (any name `models.resolve` accepts) as one llama.cpp GGUF file at OUT."""
    import gguf

    from pmcllama.export_hf import refuse_adapter
    from pmcllama.models import resolve

    refuse_adapter(model)
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(out)
    _check_destination(out, force)
    folder = resolve(model)
    config = read_config(folder)
    plan = tensor_plan(folder, config, dtype)
    file_type = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"]
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        _write(tmp, folder, config, plan, str(model), int(file_type))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for item in plan:
        if item["note"]:
            say(f"[export] {item['name']}: {item['note']}")
    size = out.stat().st_size
    say(f"[export] wrote {out} ({len(plan)} tensors, {dtype}, {size / 2**20:.1f} MiB)")
    return out


def _write(tmp: Path, folder: Path, config: dict, plan: list[dict], name: str, file_type: int) -> None:
    import gguf

    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        add_hparams(writer, config, model_name(name), file_type)
        if any(item["type"] in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0) for item in plan):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_tokenizer(writer, folder, config)
        for item in plan:
            shape, dt, nbytes = _nbytes(item)
            writer.add_tensor_info(item["name"], shape, dt, nbytes, raw_dtype=item["type"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item, data in _stream(plan):
            writer.write_tensor_data(convert_tensor(item, data, config))
    finally:
        writer.close()
