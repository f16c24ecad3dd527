"""Bad input to the training stages: each a clear error before training starts."""
from __future__ import annotations

import json
import shutil

import pytest

from pmcllama import finetune, pretrain
from pmcllama.config import ConfigError, load_config
from pmcllama.errors import UserError
from pmcllama.training.config import FinetuneConfig, PretrainConfig
from pmcllama.training.data import read_chat_jsonl
from test_resume import PRETRAIN


def _edit_manifest(src, dst, **changes):
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for k, v in changes.items():
        m[k] = v
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _run(tmp_path, data, **extra):
    return pretrain.run(PretrainConfig(**{**PRETRAIN, "data": str(data), "out": str(tmp_path / "out"), **extra}))


def test_shards_of_another_tokenizer_size_are_refused(tmp_path, corpus):  # noqa: F811
    data = _edit_manifest(corpus, tmp_path / "c", vocab_size=32000)
    with pytest.raises(UserError, match=r"corpus was tokenized with 'tiny-llama' \(vocab 32000, eos \d+\) but the "
                                        r"model's tokenizer has vocab 1024"):
        _run(tmp_path, data)
    assert not (tmp_path / "out.partial").exists()


def test_shards_of_a_same_size_but_different_vocabulary_are_refused(tmp_path, corpus):  # noqa: F811
    from pmcllama.models import resolve

    other = tmp_path / "other-tok"
    shutil.copytree(resolve("tiny-llama"), other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[500:502]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, same EOS, two ids swapped
    (other / "tokenizer.json").write_text(json.dumps(spec))
    data = _edit_manifest(corpus, tmp_path / "c", tokenizer=str(other))
    with pytest.raises(UserError, match=r"whose vocabulary differs from the model's \(same size 1024"):
        _run(tmp_path, data)


def test_empty_and_missing_sources_and_bad_weights(tmp_path, corpus):  # noqa: F811
    data = tmp_path / "c"
    shutil.copytree(corpus, data)
    (data / "papers" / "tokens.bin").write_bytes(b"")
    import numpy as np

    np.save(data / "papers" / "index.npy", np.zeros((0, 2), dtype=np.int64))
    with pytest.raises(UserError, match=r"corpus source 'papers' is empty \(0 tokens\); leave it out with "
                                        r"weights=\{'books': 3.0\}"):
        _run(tmp_path, data)
    assert _run(tmp_path, data, weights={"books": 1.0}, val_sequences=2, max_steps=2, eval_every=None).is_dir()
    with pytest.raises(UserError, match=r"weights name unknown corpus source\(s\) \['news'\]"):
        _run(tmp_path, corpus, weights={"books": 1.0, "news": 2.0})
    shutil.rmtree(data / "papers")
    with pytest.raises(UserError, match=r"source 'papers' listed in the manifest has no folder"):
        _run(tmp_path, data)
    for w in ("0", "-1", ".nan"):
        with pytest.raises(ConfigError, match="weight of source 'books' must be > 0"):
            load_config(PretrainConfig, None, [f"weights={{books: {w}}}"])
    zero = _edit_manifest(corpus, tmp_path / "z", sources={
        **json.loads((corpus / "manifest.json").read_text())["sources"],
        "papers": {"weight": 0, "path": "papers"}})
    with pytest.raises(UserError, match=r"manifest.json: corpus manifest gives source weights that are not > 0: "
                                        r"\{'papers': 0.0\}"):
        _run(tmp_path, zero)


def test_chat_records_without_an_answer_are_refused(tmp_path, instructions):  # noqa: F811
    data = tmp_path / "i"
    shutil.copytree(instructions, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[3])
    rec["messages"] = rec["messages"][:1]
    lines[3] = json.dumps(rec)
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    cfg = FinetuneConfig(model="tiny-llama", data=str(data), out=str(tmp_path / "o"), precision="fp32", max_steps=1)
    with pytest.raises(UserError, match=r"train.jsonl:4: record has no assistant turn"):
        finetune.run(cfg)
    rec["messages"] = [rec["messages"][0], {"role": "assistant", "content": "  "}]
    lines[3] = json.dumps(rec)
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train.jsonl:4: record has an empty assistant turn"):
        read_chat_jsonl(data / "train.jsonl")
