"""How close llama.cpp on an exported GGUF stays to transformers on the source model: next-token
top-1 agreement, teacher-forced over a fixed medical text (llama.cpp's greedy token after each
prefix, its prompt cache reused, against transformers' argmax at each position)."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_export import cli, llama_cpp_server

MEDICAL = ("A 64-year-old man with type 2 diabetes and hypertension presents with crushing chest pain "
           "radiating to the left arm for two hours. The electrocardiogram shows ST-segment elevation in "
           "leads II, III and aVF, consistent with an inferior myocardial infarction. He receives aspirin, "
           "a P2Y12 inhibitor and heparin, and is taken for primary percutaneous coronary intervention. "
           "Metformin is held before contrast; beta-blockers and a high-intensity statin are started.")


def hf_argmax(model_name: str, text: str) -> tuple[list[int], list[int]]:
    """(token ids of `text`, transformers' argmax next token after each prefix), fp32."""
    import torch

    from pmcllama.models import load_model

    model, tok = load_model(model_name)
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return ids, logits.argmax(-1).tolist()[:-1]


def llama_cpp_argmax(path: Path, ids: list[int]) -> list[int]:
    """llama.cpp's greedy next token after ids[:k] for k = 1 .. len(ids)-1."""
    server = llama_cpp_server(path, n_ctx=2 * len(ids) + 16)
    out = []
    for k in range(1, len(ids)):
        res = server.handle_completions({"prompt": ids[:k], "max_tokens": 1, "temperature": 0, "n_probs": 1,
                                         "cache_prompt": True})
        out.append(res["choices"][0]["logprobs"]["content"][0]["id"])
    return out


def agreement(model_name: str, path: Path, text: str = MEDICAL) -> float:
    ids, hf = hf_argmax(model_name, text)
    cpp = llama_cpp_argmax(path, ids)
    return sum(a == b for a, b in zip(hf, cpp)) / len(hf)


@pytest.fixture(scope="module")
def tiny_argmax() -> tuple[list[int], list[int]]:
    ids, hf = hf_argmax("tiny-llama", MEDICAL)
    assert len(ids) > 150 and len(set(hf)) > 50  # a real test: the argmax moves along the text
    return ids, hf


@pytest.mark.parametrize("dtype,least", [("bf16", 1.0), ("q8_0", 0.95), ("q4_0", 0.8)])
def test_llama_cpp_on_tiny_exports_follows_transformers(dtype, least, tiny_argmax, tmp_path):
    """bf16 and q8_0 measured 1.0, q4_0 1.0 (tiny-llama, this text)."""
    pytest.importorskip("xllamacpp")
    from pmcllama.export import export_gguf

    out = export_gguf("tiny-llama", tmp_path / f"t-{dtype}.gguf", dtype, say=lambda s: None)
    ids, hf = tiny_argmax
    cpp = llama_cpp_argmax(out, ids)
    assert sum(a == b for a, b in zip(hf, cpp)) / len(hf) >= least


def test_q4_0_keeps_the_head_at_q8_0_and_says_so(tmp_path):
    import gguf

    from pmcllama.export import export_gguf
    from test_export import fields

    said: list[str] = []
    export_gguf("tiny-llama", tmp_path / "t.gguf", "q4_0", say=said.append)
    _, tensors = fields(tmp_path / "t.gguf")
    Q = gguf.GGMLQuantizationType
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0 and tensors["blk.1.ffn_up.weight"].tensor_type == Q.Q4_0
    assert "[export] token_embd.weight: the embeddings / output head: Q8_0 instead of Q4_0" in said


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_q8_0_and_bf16_agree_with_transformers(smollm2, tmp_path):
    """Measured on this text: q8_0 0.971 (100 of 103 positions), bf16 1.0, f16 1.0; q4_0 is far
    lower on a 135M model (reported by bench/bench_export.py, not asserted)."""
    pytest.importorskip("xllamacpp")
    ids, hf = hf_argmax(smollm2, MEDICAL)
    for dtype in ("q8_0", "bf16"):
        out = tmp_path / f"s-{dtype}.gguf"
        res = cli(smollm2, "--out", str(out), f"dtype={dtype}")
        assert res.returncode == 0, res.stderr
        cpp = llama_cpp_argmax(out, ids)
        assert sum(a == b for a, b in zip(hf, cpp)) / len(hf) >= 0.95, dtype
        out.unlink()
