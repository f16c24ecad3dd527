"""SentencePiece tokenizers in a GGUF export (`tokenizer.ggml.model = llama`), and the
architectures export accepts or refuses."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_export import assert_one_line_error, cli, fields, llama_cpp_server

spm = pytest.importorskip("sentencepiece")

LINES = ["The patient was given metformin 500 mg twice daily for type 2 diabetes.",
         "Beta-blockers such as propranolol lower the heart rate and blood pressure.",
         "An electrocardiogram showed ST-segment elevation in the inferior leads.",
         "Atrial fibrillation increases the risk of stroke; anticoagulation is advised.",
         "Chronic kidney disease is staged by the estimated glomerular filtration rate."] * 20
TEXTS = ["The patient was given", "Hypertension and diabetes: β-blockers 40 mg", "two  spaces\tand a tab",
         "unseen wörds ünïcode 血压"]


def train_spm(folder: Path, model_type: str = "bpe", vocab: int = 300) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(LINES), model_prefix=str(folder / "sp"), vocab_size=vocab,
                                   model_type=model_type, byte_fallback=True, character_coverage=1.0,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    (folder / "sp.model").rename(folder / "tokenizer.model")
    (folder / "sp.vocab").unlink()
    return folder / "tokenizer.model"


def spm_llama(folder: Path, with_model_file: bool) -> Path:
    """A random Llama with a LLaMA-2 style SentencePiece tokenizer (transformers 5 saves only
    tokenizer.json; `with_model_file` puts tokenizer.model beside it, as LLaMA checkpoints ship)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from pmcllama.models import save_model

    model_file = train_spm(folder.with_name(folder.name + "-spm"))
    tok = LlamaTokenizer.from_pretrained(str(model_file.parent), add_bos_token=True)  # as LLaMA-2 does
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # greedy text of whole pieces: no control or byte token can win
        model.lm_head.weight.mul_(20)[:259] = 0
    save_model(model, tok, folder)
    if with_model_file:
        shutil.copy(model_file, folder / "tokenizer.model")
    return folder


def llama_cpp_tokens(path: Path, text: str, n: int) -> tuple[int, str]:
    """(llama.cpp's prompt token count, its greedy continuation of n tokens) for a text prompt."""
    out = llama_cpp_server(path).handle_completions({"prompt": text, "max_tokens": n, "temperature": 0})
    return out["usage"]["prompt_tokens"], out["choices"][0]["text"]


@pytest.mark.parametrize("with_model_file", [True, False], ids=["tokenizer.model", "tokenizer.json"])
def test_sentencepiece_vocabulary_tokenises_like_transformers(with_model_file, tmp_path):
    import torch

    from pmcllama.export import export_gguf
    from pmcllama.models import load_model

    src = spm_llama(tmp_path / "m", with_model_file)
    assert (src / "tokenizer.model").is_file() == with_model_file
    out = export_gguf(src, tmp_path / "m.gguf", "f32", say=lambda s: None)
    kv, _ = fields(out)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m-spm" / "tokenizer.model"))
    assert kv["tokenizer.ggml.model"] == "llama" and kv["tokenizer.ggml.add_space_prefix"] is True
    assert kv["tokenizer.ggml.tokens"] == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    scores = kv["tokenizer.ggml.scores"]
    normal = [i for i in range(sp.vocab_size()) if kv["tokenizer.ggml.token_type"][i] == 1]
    assert sorted(normal, key=lambda i: -scores[i]) == sorted(normal, key=lambda i: -sp.GetScore(i))
    if with_model_file:
        assert scores == pytest.approx([sp.GetScore(i) for i in range(sp.vocab_size())])
    assert kv["tokenizer.ggml.token_type"].count(6) == 256 and kv["tokenizer.ggml.token_type"][1] == 3
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.add_bos_token"] is True
    pytest.importorskip("xllamacpp")
    model, tok = load_model(src)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == 1
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
        assert llama_cpp_tokens(out, text, 8) == (len(ids), tok.decode(want)), text


@pytest.mark.slow
def test_unrepresentable_tokenizers_and_other_architectures_are_refused(tmp_path):
    from pmcllama.models import resolve

    src = spm_llama(tmp_path / "m", with_model_file=True)
    uni = tmp_path / "uni"
    shutil.copytree(src, uni)
    shutil.copy(train_spm(tmp_path / "uni-spm", "unigram"), uni / "tokenizer.model")
    assert_one_line_error(cli(str(uni), "--out", str(tmp_path / "u.gguf")), "SentencePiece UNIGRAM", "BPE")
    small = tmp_path / "small"
    shutil.copytree(src, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 200}))
    assert_one_line_error(cli(str(small), "--out", str(tmp_path / "s.gguf")), "vocab_size is 200", "not representable")
    for arch, words in (("Qwen2ForCausalLM", ("Qwen2ForCausalLM", "biases")), ("GemmaForCausalLM", ("GemmaForCausalLM",))):
        other = tmp_path / arch
        shutil.copytree(resolve("tiny-llama"), other)
        config = json.loads((other / "config.json").read_text())
        (other / "config.json").write_text(json.dumps({**config, "architectures": [arch]}))
        assert_one_line_error(cli(str(other), "--out", str(tmp_path / "o.gguf")), *words)
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.is_file()) == []


def test_a_mistral_checkpoint_exports_with_the_llama_layout(tmp_path):
    from pmcllama.export import export_gguf
    from pmcllama.models import resolve

    mistral = tmp_path / "mistral"
    shutil.copytree(resolve("tiny-llama"), mistral)
    config = json.loads((mistral / "config.json").read_text())
    (mistral / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"],
                                                     "model_type": "mistral", "sliding_window": None}))
    kv, tensors = fields(export_gguf(mistral, tmp_path / "m.gguf", "f32", say=lambda s: None))
    _, want = fields(export_gguf("tiny-llama", tmp_path / "t.gguf", "f32", say=lambda s: None))
    assert kv["general.architecture"] == "llama" and sorted(tensors) == sorted(want)
