"""Token shards: one flat little-endian token array per source plus a document index.

Layout of a source folder written by the corpus stage:

    tokens.bin   every document's tokens back to back (EOS after each), `uint16` when the
                 vocabulary fits (<= 65,535 ids), else `uint32`, little-endian
    index.npy    int64 array of shape (n_docs, 2): start offset and length in tokens of
                 each document (the length includes its EOS); `np.load(allow_pickle=False)`

`ShardWriter` streams batches to disk (memory holds one batch of tokens at a time);
`TokenShards` reads them back through `numpy.memmap`, so training never loads a corpus
into memory. `read_corpus(folder)` opens a corpus stage output: its manifest plus the
shards of every source it lists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pmcllama.errors import UserError

TOKENS = "tokens.bin"
INDEX = "index.npy"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def dtype_for(vocab_size: int) -> str:
    """`uint16` when every token id fits in 16 bits, else `uint32`."""
    return "uint16" if vocab_size <= 65535 else "uint32"


class ShardWriter:
    """Append documents (token id sequences) to `<folder>/tokens.bin` and index them."""

    def __init__(self, folder: str | Path, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = DTYPES[dtype]
        self.limit = np.iinfo(self.dtype).max
        self._file = open(self.folder / TOKENS, "wb")
        self._lengths: list[np.ndarray] = []
        self.num_docs = 0
        self.num_tokens = 0

    def add(self, docs: Iterable[Sequence[int]]) -> None:
        """Write a batch of documents (each already ending in its EOS)."""
        docs = [np.asarray(d, dtype=np.int64) for d in docs]
        if not docs:
            return
        flat = np.concatenate(docs)
        if flat.size and (flat.min() < 0 or flat.max() > self.limit):
            raise ValueError(f"token id out of range for {self.dtype.name}: {flat.min()}..{flat.max()}")
        self._file.write(flat.astype(self.dtype).tobytes())
        self._lengths.append(np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs)))
        self.num_docs += len(docs)
        self.num_tokens += int(flat.size)

    def close(self) -> None:
        """Flush the tokens and write the index."""
        if self._file.closed:
            return
        self._file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        starts = np.zeros_like(lengths)
        if lengths.size:
            starts[1:] = np.cumsum(lengths)[:-1]
        np.save(self.folder / INDEX, np.stack([starts, lengths], axis=1).astype(np.int64))

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TokenShards:
    """Read-only view of one source's shards: `.tokens` (memmap), `.index`, `.doc(i)`."""

    def __init__(self, folder: str | Path, dtype: str | None = None) -> None:
        self.folder = Path(folder)
        tokens_path, index_path = self.folder / TOKENS, self.folder / INDEX
        for p in (tokens_path, index_path):
            if not p.is_file():
                raise UserError("token shard file missing", p)
        try:
            index = np.load(index_path, allow_pickle=False)
        except ValueError as e:
            raise UserError(f"corrupt document index: {e}", index_path) from None
        if index.ndim != 2 or index.shape[1] != 2:
            raise UserError(f"document index has shape {index.shape}, expected (n_docs, 2)", index_path)
        self.index = index.astype(np.int64, copy=False)
        self.num_docs = int(self.index.shape[0])
        self.num_tokens = int(self.index[:, 1].sum())
        self.dtype = self._dtype(tokens_path.stat().st_size, dtype)
        if self.num_tokens:
            self.tokens = np.memmap(tokens_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        else:
            self.tokens = np.zeros(0, dtype=self.dtype)

    def _dtype(self, nbytes: int, dtype: str | None) -> np.dtype:
        if dtype is not None:
            if dtype not in DTYPES:
                raise UserError(f"unknown token dtype {dtype!r}", self.folder)
            dt = DTYPES[dtype]
        elif self.num_tokens:
            dt = DTYPES.get({2: "uint16", 4: "uint32"}.get(nbytes // self.num_tokens, ""), None)
            if dt is None:
                raise UserError(f"{TOKENS} holds {nbytes} bytes for {self.num_tokens} tokens", self.folder)
        else:
            dt = DTYPES["uint16"]
        if nbytes != self.num_tokens * dt.itemsize:
            raise UserError(f"{TOKENS} holds {nbytes} bytes; the index says {self.num_tokens} "
                            f"{dt.name} tokens ({self.num_tokens * dt.itemsize} bytes)", self.folder)
        return dt

    def __len__(self) -> int:
        return self.num_docs

    def doc(self, i: int) -> np.ndarray:
        """The tokens of document `i` (ending in EOS), a read-only view into the memmap."""
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"document {i} out of range (0..{self.num_docs - 1})")
        start, length = self.index[i]
        return self.tokens[start:start + length]

    def __repr__(self) -> str:
        return f"TokenShards({str(self.folder)!r}, docs={self.num_docs}, tokens={self.num_tokens}, dtype={self.dtype.name})"


def read_corpus(folder: str | Path) -> tuple[dict, dict[str, TokenShards]]:
    """A corpus stage output: (manifest, {source name: TokenShards})."""
    from pmcllama.stage import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("stage") != "corpus":
        raise UserError(f"not a corpus stage output (stage: {manifest.get('stage')!r})", folder)
    sources = manifest.get("sources") or {}
    if not sources:
        raise UserError("corpus manifest lists no sources", folder / "manifest.json")
    shards = {}
    for name, meta in sources.items():
        sub = folder / meta.get("path", name)
        if not sub.is_dir():
            raise UserError(f"source '{name}' listed in the manifest has no folder", sub)
        shards[name] = TokenShards(sub, manifest.get("dtype"))
    return manifest, shards
