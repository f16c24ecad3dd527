"""Model resolution, saving as plain Hugging Face folders, inspection, and no downloads."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pmcllama import models
from pmcllama.errors import UserError


def test_tiny_llama_is_deterministic_and_has_a_chat_template(tiny_model):
    model, tok = tiny_model
    assert model.config.vocab_size == len(tok) == 1024
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("Atrial septal defect")["input_ids"]) == "Atrial septal defect"


def test_save_and_reopen_with_plain_transformers(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny_model
    models.save_model(model, tok, tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    t2 = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)
    assert t2.chat_template == tok.chat_template and t2.model_max_length == 1024


def test_missing_model_is_a_clear_error_not_a_download(tmp_path):
    with pytest.raises(UserError, match="never downloads"):
        models.resolve("meta-llama/Llama-2-7b-hf")
    with pytest.raises(UserError, match="no config.json"):
        models.resolve(tmp_path)


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="only safetensors"):
        models.resolve(tmp_path)


def test_model_info_reads_the_header_only():
    info = models.model_info("tiny-llama")
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["vocab_size"] == 1024 and info["context_length"] == 1024 and info["dtype"] == "F32"
    assert info["parameters"] == 139584


def test_models_cli_lists_and_inspects():
    run = lambda *a: subprocess.run([sys.executable, "-m", "pmcllama", "models", *a], capture_output=True,
                                    text=True, timeout=120)
    p = run()
    assert "smollm2-135m" in p.stdout and "tiny-llama" in p.stdout
    p = run("tiny-llama")
    assert "parameters       139,584" in p.stdout
    p = run("/no/such/model")
    assert p.returncode == 2 and "not found" in p.stderr


@pytest.mark.smollm2
def test_smollm2_converts_from_gguf_and_reopens_identically(smollm2):
    from transformers import AutoModelForCausalLM

    folder = models.resolve(smollm2)
    info = models.model_info(smollm2)
    assert info["parameters"] == 134_515_008 and info["vocab_size"] == 49152 and info["layers"] == 30
    model, tok = models.load_model(smollm2)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert tok.model_max_length == model.config.max_position_embeddings
    plain = AutoModelForCausalLM.from_pretrained(str(folder))
    x = tok("The heart pumps blood", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(x).logits, plain(x).logits)
        nxt = tok.decode(model.generate(x, max_new_tokens=3, do_sample=False)[0, x.shape[1]:])
    assert nxt.strip()  # a real model continues the text


def test_lora_is_a_transform_attached_then_merged_into_plain_weights(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from pmcllama.training.config import LoraConfig

    model, _ = models.load_model("tiny-llama")  # its own copy: the adapters wrap it in place
    wrapped = models.attach_lora(model, LoraConfig(rank=2, alpha=4, dropout=0.0, targets=["q_proj"]))
    trained = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and "q_proj" in n for n in trained)
    assert len(trained) == 2 * model.config.num_hidden_layers  # lora_A and lora_B per layer
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)  # B starts at zero; make the adapters change the output
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
    merged = models.merge_lora(wrapped, tmp_path / "adapter")
    assert type(merged) is LlamaForCausalLM and not any("lora_" in n for n, _ in merged.named_parameters())
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)
    merged.save_pretrained(str(tmp_path / "m"))
    assert type(AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))) is LlamaForCausalLM
