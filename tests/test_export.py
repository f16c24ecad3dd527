"""`pmcllama export`: a GGUF that transformers and llama.cpp read back as the source model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

TEXT = "Metformin 500 mg twice daily; β-blockers (e.g. propranolol 40 mg) lower TNF-α by 12 µg/L and IL-6."
PROMPT = "The patient was given"


def cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*prefix, sys.executable, "-m", "pmcllama", "export", *args], capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory) -> Path:
    from pmcllama.export import export_gguf

    return export_gguf("tiny-llama", tmp_path_factory.mktemp("gguf") / "tiny.gguf", "f32", say=lambda s: None)


def fields(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return kv, {t.name: t for t in reader.tensors}


def test_metadata_and_tensor_layout(tiny_f32):
    from pmcllama.models import load_tokenizer, resolve

    config = json.loads((resolve("tiny-llama") / "config.json").read_text())
    kv, tensors = fields(tiny_f32)
    assert kv["general.architecture"] == "llama" and kv["general.name"] == "tiny-llama"
    assert kv["general.file_type"] == gguf.LlamaFileType.ALL_F32
    expect = {"context_length": 1024, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
              "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16,
              "vocab_size": 1024}
    assert {k: kv[f"llama.{k}"] for k in expect} == expect
    assert kv["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    tok = load_tokenizer("tiny-llama")
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "gpt-2"
    assert len(kv["tokenizer.ggml.tokens"]) == 1024 and kv["tokenizer.ggml.tokens"][tok.eos_token_id] == "<|im_end|>"
    assert kv["tokenizer.ggml.token_type"][tok.eos_token_id] == 3 and kv["tokenizer.ggml.token_type"][500] == 1
    assert len(kv["tokenizer.ggml.merges"]) > 700
    assert kv["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == kv["tokenizer.ggml.padding_token_id"]
    assert "tokenizer.ggml.bos_token_id" not in kv and kv["tokenizer.ggml.add_bos_token"] is False
    assert kv["tokenizer.chat_template"] == tok.chat_template
    # tied embeddings: only token_embd; shapes in GGUF order (columns first)
    assert "output.weight" not in tensors and len(tensors) == 2 + 2 * 9
    assert list(tensors["token_embd.weight"].shape) == [64, 1024]
    assert list(tensors["blk.1.attn_k.weight"].shape) == [64, 32]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [128, 64]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())


def test_q_and_k_rows_are_permuted_for_llama_cpp(tiny_f32):
    from safetensors.numpy import load_file

    from pmcllama.export import permute_rope
    from pmcllama.models import resolve

    source = load_file(str(resolve("tiny-llama") / "model.safetensors"))
    _, tensors = fields(tiny_f32)
    q, k = source["model.layers.0.self_attn.q_proj.weight"], source["model.layers.0.self_attn.k_proj.weight"]
    assert np.array_equal(np.asarray(tensors["blk.0.attn_q.weight"].data), permute_rope(q, 4))
    assert np.array_equal(np.asarray(tensors["blk.0.attn_k.weight"].data), permute_rope(k, 2))
    assert not np.array_equal(permute_rope(q, 4), q)
    v = source["model.layers.0.self_attn.v_proj.weight"]
    assert np.array_equal(np.asarray(tensors["blk.0.attn_v.weight"].data), v)


def test_transformers_reads_the_f32_export_back(tiny_f32):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pmcllama.models import load_model

    model, tok = load_model("tiny-llama")
    back = AutoModelForCausalLM.from_pretrained(tiny_f32.parent, gguf_file=tiny_f32.name).eval()
    back_tok = AutoTokenizer.from_pretrained(tiny_f32.parent, gguf_file=tiny_f32.name)
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    assert back_tok(TEXT)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        diff = (model.eval()(ids).logits - back(ids).logits).abs().max().item()
    assert diff < 1e-4


def _write_model(folder: Path, hidden: int, inter: int) -> Path:
    """A random Llama with the tiny tokenizer whose rows are not all whole Q8_0 blocks."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pmcllama.models import load_tokenizer, save_model

    tok = load_tokenizer("tiny-llama")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(1)
    return save_model(LlamaForCausalLM(config), tok, folder)


@pytest.mark.parametrize("dtype,error", [("q8_0", 1 / 100), ("q4_0", 1 / 6)])
def test_quantised_types_take_whole_blocks_and_fall_back_to_f16(dtype, error, tmp_path):
    """Q8_0 / Q4_0 rows of 64 quantise; rows of 48 are not whole blocks of 32 and go F16 (said).
    The error bound is on the mean absolute error against the mean weight."""
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    src = _write_model(tmp_path / "odd", hidden=48, inter=64)
    res = cli(str(src), "--out", str(tmp_path / "odd.gguf"), f"dtype={dtype}")
    assert res.returncode == 0, res.stderr
    kv, tensors = fields(tmp_path / "odd.gguf")
    Q = gguf.GGMLQuantizationType
    qtype = Q[dtype.upper()]
    assert kv["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"]
    assert tensors["blk.0.ffn_down.weight"].tensor_type == qtype  # rows of 64
    assert tensors["blk.0.attn_q.weight"].tensor_type == Q.F16  # rows of 48
    assert tensors["output.weight"].tensor_type == Q.F16 and tensors["output_norm.weight"].tensor_type == Q.F32
    assert f"blk.0.attn_q.weight: rows of 48 are not a multiple of 32: F16 instead of {qtype.name}" in res.stdout
    assert "ffn_down" not in res.stdout.replace("[export] wrote", "")
    down = load_file(str(src / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"]
    back = dequantize(np.asarray(tensors["blk.0.ffn_down.weight"].data), qtype)
    assert back.shape == down.shape and 0 < np.abs(back - down).mean() < np.abs(down).mean() * error


def llama_cpp_server(path: Path, n_ctx: int = 256):
    """An in-process llama.cpp server on a GGUF file, 2 threads (skips without xllamacpp)."""
    xlc = pytest.importorskip("xllamacpp")
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = n_ctx
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    return xlc.Server(params)


def _llama_cpp_greedy(path: Path, n: int) -> str:
    out = llama_cpp_server(path).handle_completions({"prompt": PROMPT, "max_tokens": n, "temperature": 0})
    return out["choices"][0]["text"]



def _hf_greedy(name: str, n: int) -> str:
    import torch

    from pmcllama.models import load_model

    model, tok = load_model(name)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.eval().generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:])


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_runs_the_tiny_export_like_transformers(dtype, tmp_path):
    pytest.importorskip("xllamacpp")
    res = cli("tiny-llama", "--out", str(tmp_path / "t.gguf"), f"dtype={dtype}")
    assert res.returncode == 0, res.stderr
    assert _llama_cpp_greedy(tmp_path / "t.gguf", 12) == _hf_greedy("tiny-llama", 12)


@pytest.mark.smollm2
@pytest.mark.slow
def test_llama_cpp_runs_the_smollm2_export_like_transformers(smollm2, tmp_path):
    """f32: the same 12 greedy tokens. f16: llama.cpp also rounds activations to f16 in its
    matrix products, so only the first tokens must agree (the paths part after a few)."""
    pytest.importorskip("xllamacpp")
    hf = _hf_greedy(smollm2, 12)
    assert len(hf.split()) >= 3
    for dtype in ("f32", "f16"):
        out = tmp_path / f"s-{dtype}.gguf"
        res = cli(smollm2, "--out", str(out), f"dtype={dtype}")
        assert res.returncode == 0, res.stderr
        text = _llama_cpp_greedy(out, 12)
        assert text == hf if dtype == "f32" else text.split()[0] == hf.split()[0], (dtype, text, hf)
        out.unlink()


def assert_one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert err[-1].startswith("error: ") and all(w in err[-1] for w in words), err
    return err[-1]


@pytest.mark.slow
def test_bad_inputs_exit_2_and_leave_nothing(tmp_path):
    from pmcllama.models import resolve

    gpt = tmp_path / "gpt"
    shutil.copytree(resolve("tiny-llama"), gpt)
    config = json.loads((gpt / "config.json").read_text())
    (gpt / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    out = tmp_path / "out"
    out.mkdir()
    assert_one_line_error(cli(str(gpt), "--out", str(out / "m.gguf")), "GPT2LMHeadModel", "LlamaForCausalLM")
    assert_one_line_error(cli(str(out), "--out", str(out / "m.gguf")), "no config.json")
    assert_one_line_error(cli("tiny-llama", "--out", str(out / "m.gguf"), "dtype=q4"), "q8_0")
    assert_one_line_error(cli("tiny-llama", "--out", str(out / "m.gguf"), "bits=8"), "bits=8")
    assert_one_line_error(cli("tiny-llama", "--out", str(tmp_path / "gpt" / "config.json" / "m.gguf")))
    assert list(out.iterdir()) == []
    mine = out / "m.gguf"
    mine.write_bytes(b"mine")
    assert_one_line_error(cli("tiny-llama", "--out", str(mine)), "--force")
    assert mine.read_bytes() == b"mine"
    assert cli("tiny-llama", "--out", str(mine), "--force").returncode == 0
    assert mine.read_bytes()[:4] == b"GGUF" and sorted(p.name for p in out.iterdir()) == ["m.gguf"]


def test_unwritable_destination_without_root_powers(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is absent: cannot drop CAP_DAC_OVERRIDE")
        prefix = ("setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override")
    assert_one_line_error(cli("tiny-llama", "--out", str(ro / "m.gguf"), prefix=prefix), str(ro))
    assert list(ro.iterdir()) == []


def test_a_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    from pmcllama import export

    calls = []

    def fail_third(item, data, config):
        calls.append(item["name"])
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(tmp_path / "m.gguf"))
        return real(item, data, config)

    real = export.convert_tensor
    monkeypatch.setattr(export, "convert_tensor", fail_third)
    with pytest.raises(OSError, match="No space"):
        export.export_gguf("tiny-llama", tmp_path / "m.gguf", "f16", say=lambda s: None)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


# What the shipped SmolLM2 GGUF holds that an export of it cannot: the descriptive general.* keys
# come from the Hugging Face repository (its card and name), not from config.json or the weights;
# add_space_prefix is a SentencePiece setting llama.cpp does not read for a gpt2 vocabulary.
NOT_IN_AN_EXPORT = {"general.basename", "general.finetune", "general.languages", "general.license",
                    "general.organization", "general.size_label", "general.type", "tokenizer.ggml.add_space_prefix"}


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_round_trip_keeps_the_shipped_gguf_vocabulary_and_keys(smollm2, tmp_path):
    """smollm2-135m (the shipped Q4_1 GGUF, dequantised to a cached HF folder) exported back to q8_0.
    Differences: general.name (our model name), file_type (q8_0, not Q4_1) and the pre-tokenizer:
    transformers' GGUF loader builds the cached folder's tokenizer.json with the plain GPT-2 split,
    dropping SmolLM's one-digit-at-a-time step, so the export says gpt-2 where the shipped file says
    smollm (a real SmolLM2 folder's tokenizer.json exports as smollm)."""
    from pmcllama.models import smollm2_gguf

    out = tmp_path / "s.gguf"
    res = cli(smollm2, "--out", str(out), "dtype=q8_0")
    assert res.returncode == 0, res.stderr
    ours, ours_t = fields(out)
    shipped, shipped_t = fields(smollm2_gguf())
    assert set(shipped) - set(ours) == NOT_IN_AN_EXPORT and set(ours) <= set(shipped)
    differ = {k for k in set(ours) & set(shipped) if ours[k] != shipped[k]}
    assert differ == {"general.name", "general.file_type", "tokenizer.ggml.pre"}
    assert (shipped["tokenizer.ggml.pre"], ours["tokenizer.ggml.pre"]) == ("smollm", "gpt-2")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.chat_template"):
        assert ours[key] == shipped[key], key
    assert {n: list(t.shape) for n, t in ours_t.items()} == {n: list(t.shape) for n, t in shipped_t.items()}


def test_smollm_digit_split_is_written_as_smollm():
    from pmcllama.export_vocab import _pre_tokenizer

    seq = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                  {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]}
    assert _pre_tokenizer({"normalizer": None, "pre_tokenizer": seq}, Path("t.json")) == "smollm"
    seq["pretokenizers"][0]["individual_digits"] = False
    with pytest.raises(Exception, match="no llama.cpp equivalent"):
        _pre_tokenizer({"normalizer": None, "pre_tokenizer": seq}, Path("t.json"))


def test_bf16_and_f16_source_weights_are_read_exactly(tmp_path):
    """Tensors are read from the safetensors bytes (no memory map): bf16/f16 sources come out as
    their exact float32 values."""
    import torch
    from safetensors.torch import load_file

    from pmcllama.models import load_model, save_model

    model, tok = load_model("tiny-llama")
    for dtype in (torch.bfloat16, torch.float16):
        src = save_model(model.to(dtype), tok, tmp_path / str(dtype))
        _, tensors = fields(export_gguf_quiet(src, tmp_path / f"{dtype}.gguf"))
        want = load_file(str(src / "model.safetensors"))["model.layers.1.mlp.up_proj.weight"].float().numpy()
        assert np.array_equal(np.asarray(tensors["blk.1.ffn_up.weight"].data), want)


def export_gguf_quiet(src, out: Path) -> Path:
    from pmcllama.export import export_gguf

    return export_gguf(src, out, "f32", say=lambda s: None)


def test_export_streams_without_torch_or_transformers(tmp_path):
    """The export reads safetensors headers and tokenizer files itself: importing torch alone
    costs more memory than a small model's whole export (the peak-RSS target in bench_export)."""
    from pmcllama.models import resolve

    resolve("tiny-llama")  # built (with torch) here, so the export below only reads it
    code = ("import sys; from pathlib import Path; from pmcllama.export import export_gguf; "
            f"export_gguf('tiny-llama', Path({str(tmp_path / 't.gguf')!r}), 'q8_0', say=lambda s: None); "
            "print(sorted(m for m in ('torch', 'transformers', 'safetensors.torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    kv, tensors = fields(tmp_path / "t.gguf")
    assert kv["general.name"] == "tiny-llama" and tensors["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"


def test_a_broken_tokenizer_config_is_one_line_naming_it(tmp_path):
    from pmcllama.models import resolve

    src = tmp_path / "m"
    shutil.copytree(resolve("tiny-llama"), src)
    (src / "tokenizer_config.json").write_text('{"bos_token": "<s>",\n  "eos_token": oops}\n')
    assert_one_line_error(cli(str(src), "--out", str(tmp_path / "m.gguf")), "tokenizer_config.json", "not valid JSON")
    assert not (tmp_path / "m.gguf").exists()
