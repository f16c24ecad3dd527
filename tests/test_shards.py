"""Token shards: writer/reader round trip, dtype, index, corruption, read_corpus."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pmcllama.data.shards import INDEX, TOKENS, ShardWriter, TokenShards, dtype_for, read_corpus
from pmcllama.errors import UserError


def _write(folder, docs, dtype="uint16", batch=2):
    with ShardWriter(folder, dtype) as w:
        for i in range(0, len(docs), batch):
            w.add(docs[i:i + batch])
    return w


DOCS = [[5, 6, 7, 2], [9, 2], [1, 1, 1, 1, 1, 2], [3, 2], [4, 2]]


def test_round_trip_uint16(tmp_path):
    w = _write(tmp_path / "s", DOCS)
    assert (w.num_docs, w.num_tokens) == (5, 16)
    assert (tmp_path / "s" / TOKENS).stat().st_size == 16 * 2
    sh = TokenShards(tmp_path / "s")
    assert sh.num_docs == len(sh) == 5 and sh.num_tokens == 16
    assert sh.tokens.dtype == np.dtype("<u2")
    assert isinstance(sh.tokens, np.memmap) and not sh.tokens.flags.writeable
    for i, d in enumerate(DOCS):
        assert sh.doc(i).tolist() == d
    assert sh.doc(-1).tolist() == DOCS[-1]
    index = np.load(tmp_path / "s" / INDEX, allow_pickle=False)
    assert index.dtype == np.int64 and index.shape == (5, 2)
    assert index[:, 0].tolist() == [0, 4, 6, 12, 14]
    assert index[:, 1].tolist() == [4, 2, 6, 2, 2]
    with pytest.raises(IndexError):
        sh.doc(5)


def test_uint32_and_little_endian(tmp_path):
    docs = [[70000, 1, 2], [65536, 2]]
    _write(tmp_path / "s", docs, dtype="uint32")
    raw = (tmp_path / "s" / TOKENS).read_bytes()
    assert raw[:4] == (70000).to_bytes(4, "little")
    sh = TokenShards(tmp_path / "s")
    assert sh.tokens.dtype == np.dtype("<u4")
    assert [sh.doc(i).tolist() for i in range(2)] == docs


def test_dtype_for():
    assert dtype_for(1024) == "uint16"
    assert dtype_for(49152) == "uint16"
    assert dtype_for(65535) == "uint16"
    assert dtype_for(128256) == "uint32"


def test_out_of_range_token_rejected(tmp_path):
    with ShardWriter(tmp_path / "s", "uint16") as w:
        with pytest.raises(ValueError, match="out of range"):
            w.add([[70000]])


def test_corrupt_size_is_user_error(tmp_path):
    _write(tmp_path / "s", DOCS)
    with open(tmp_path / "s" / TOKENS, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="bytes"):
        TokenShards(tmp_path / "s")
    with pytest.raises(UserError, match="bytes"):
        TokenShards(tmp_path / "s", "uint32")


def test_missing_files(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(UserError, match="missing"):
        TokenShards(tmp_path / "s")


def _manifest(folder, sources, dtype="uint16"):
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"stage": "corpus", "dtype": dtype, "sources": sources}), encoding="utf-8")


def test_read_corpus(tmp_path):
    _write(tmp_path / "c" / "books", DOCS)
    _manifest(tmp_path / "c", {"books": {"weight": 2.0, "documents": 5, "tokens": 16, "path": "books"}})
    manifest, shards = read_corpus(tmp_path / "c")
    assert manifest["sources"]["books"]["weight"] == 2.0
    assert set(shards) == {"books"} and shards["books"].num_tokens == 16


def test_read_corpus_missing_source_folder(tmp_path):
    _manifest(tmp_path / "c", {"papers": {"weight": 1.0, "documents": 1, "tokens": 1, "path": "papers"}})
    with pytest.raises(UserError, match="papers"):
        read_corpus(tmp_path / "c")


def test_read_corpus_not_a_stage(tmp_path):
    with pytest.raises(UserError, match="manifest"):
        read_corpus(tmp_path)
