"""The tokenizer of a GGUF export: byte-level BPE as `gpt2`, SentencePiece as `llama`.

- Byte-level BPE with the GPT-2 split (SmolLM2, tiny-llama): tokens, types and merges, model
  `gpt2`, pre-tokenizer `gpt-2`.
- SentencePiece BPE (LLaMA-1/2 style): tokens, scores and types, model `llama`. Read from
  `tokenizer.model` when the folder has one (its pieces, scores and kinds), else from a
  `tokenizer.json` that transformers converted from one (BPE with byte fallback behind a Metaspace
  `▁` prefix): the scores are then minus each piece's rank, the merge order SentencePiece's own
  BPE scores give.
Anything else (a unigram SentencePiece model, another pre-tokenizer) is refused in one line.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pmcllama.errors import UserError
from pmcllama.inputs import load_json, read_json, read_text

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")


def _pre_tokenizer(tok_json: dict, path: Path) -> str:
    pre = tok_json.get("pre_tokenizer") or {}
    if tok_json.get("normalizer") is None:
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
            return "gpt-2"  # llama.cpp's name for the GPT-2 regex split
        steps = pre.get("pretokenizers") or []
        if pre.get("type") == "Sequence" and [p.get("type") for p in steps] == ["Digits", "ByteLevel"] \
                and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "smollm"  # SmolLM's: every digit alone, then the GPT-2 split
    raise UserError(f"tokenizer pre-tokenizer {json.dumps(pre)[:80]} has no llama.cpp equivalent "
                    "known to pmcllama (byte-level BPE with the GPT-2 split, or SentencePiece BPE, is exported)", path)


def _is_sentencepiece_json(tok_json: dict) -> bool:
    """A tokenizer.json transformers converted from a SentencePiece BPE model."""
    model, pre = tok_json.get("model") or {}, tok_json.get("pre_tokenizer") or {}
    normal = json.dumps(tok_json.get("normalizer") or {})
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and (
        pre.get("type") == "Metaspace" or "\u2581" in normal)


@dataclass
class TokenizerFacts:
    """What a GGUF vocabulary needs from a model folder's tokenizer files, read with the
    `tokenizers` library and plain JSON (transformers' AutoTokenizer would import torch, which
    alone is more memory than a small model's export)."""
    vocab: dict[str, int]  # every token, added ones included
    special_ids: set[int]
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    unk_token_id: int | None
    chat_template: str | None
    add_bos: bool


def _content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(folder: Path, tok_config: dict) -> str | None:
    """chat_template.jinja (transformers 5), chat_template.json, or tokenizer_config's field
    (a string, or named templates of which GGUF takes `default`)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if template is None:
        template = _json_file(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    return template


def _json_file(path: Path) -> dict:
    """A tokenizer side file's JSON ({} when absent); bad JSON is one line naming the file."""
    return read_json(path, path.name) if path.is_file() else {}


def read_tokenizer(folder: Path, tok_text: str | None, tok_json: dict | None) -> TokenizerFacts:
    """The vocabulary, special tokens, BOS behaviour and chat template of FOLDER's tokenizer
    (`tok_text`/`tok_json`: its tokenizer.json as text and parsed, None when it has none)."""
    tok_config = _json_file(folder / "tokenizer_config.json")
    named = _json_file(folder / "special_tokens_map.json")
    named.update({k: v for k, v in tok_config.items() if k.endswith("_token")})
    added = {int(i): a for i, a in (tok_config.get("added_tokens_decoder") or {}).items()}
    tokenizer = None
    if tok_json is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tok_text)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        added.update({a["id"]: a for a in tok_json.get("added_tokens", [])})
    else:
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        vocab = {sp.IdToPiece(i): i for i in range(sp.vocab_size())}
    vocab.update({a["content"]: i for i, a in added.items()})
    ids = {k: vocab.get(_content(v)) for k, v in named.items() if _content(v) is not None}
    special = {i for i, a in added.items() if a.get("special")} | {i for i in ids.values() if i is not None}
    bos = ids.get("bos_token")
    if "add_bos_token" in tok_config:
        add_bos = bool(tok_config["add_bos_token"])
    elif tokenizer is not None:  # does the tokenizer's post-processor put BOS in front by itself?
        first = tokenizer.encode("a").ids[:1]
        add_bos = bos is not None and first == [bos]
    else:
        add_bos = True  # a SentencePiece LLaMA tokenizer's default
    return TokenizerFacts(vocab, special, bos, ids.get("eos_token"), ids.get("pad_token"), ids.get("unk_token"),
                          _chat_template(folder, tok_config), add_bos)


def add_tokenizer(writer, folder: Path, config: dict) -> None:
    """The vocabulary, special ids, BOS flag and chat template."""
    path = folder / "tokenizer.json"
    tok_text = read_text(path, "tokenizer.json") if path.is_file() else None
    tok_json = load_json(tok_text, path) if tok_text is not None else None
    if tok_json is None and not (folder / "tokenizer.model").is_file():
        raise UserError("no tokenizer.json or tokenizer.model in the model folder", folder)
    tok = read_tokenizer(folder, tok_text, tok_json)
    if (folder / "tokenizer.model").is_file():
        add_sentencepiece_model(writer, folder / "tokenizer.model", tok, config)
    elif _is_sentencepiece_json(tok_json):
        add_sentencepiece_json(writer, tok_json, tok, config)
    else:
        add_bpe(writer, tok_json, tok, config, path)
    _add_special_ids(writer, tok, config)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def add_bpe(writer, tok_json: dict, tok: TokenizerFacts, config: dict, path: Path) -> None:
    """Byte-level BPE vocabulary and merges (`gpt2`)."""
    if (tok_json.get("model") or {}).get("type") != "BPE":
        raise UserError(f"tokenizer model {tok_json.get('model', {}).get('type')!r} is not exported "
                        "(byte-level BPE and SentencePiece BPE are)", path)
    pre = _pre_tokenizer(tok_json, path)
    by_id = {i: t for t, i in tok.vocab.items()}
    special = {a["id"] for a in tok_json.get("added_tokens", []) if a.get("special")}
    added = {a["id"] for a in tok_json.get("added_tokens", [])}
    n = config["vocab_size"]
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = [CONTROL if i in special else USER_DEFINED if i in added else NORMAL if i in by_id else UNUSED
             for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


def _write_llama_vocab(writer, pieces: list[tuple[str, float, int]], tok: TokenizerFacts, config: dict, add_prefix: bool) -> None:
    """Pieces (text, score, type) padded with unused tokens to the model's vocab_size, plus added tokens."""
    n = config["vocab_size"]
    extra = {i: t for t, i in tok.vocab.items() if i >= len(pieces)}
    special = tok.special_ids
    for i in range(len(pieces), n):
        text = extra.get(i, f"[PAD{i}]")
        pieces.append((text, -1000.0, CONTROL if i in special else USER_DEFINED if i in extra else UNUSED))
    if len(pieces) > n:
        raise UserError(f"the tokenizer has {len(pieces)} tokens but the model's vocab_size is {n}: "
                        "not representable in one GGUF vocabulary")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([p[0] for p in pieces])
    writer.add_token_scores([p[1] for p in pieces])
    writer.add_token_types([p[2] for p in pieces])
    writer.add_add_space_prefix(add_prefix)


def add_sentencepiece_model(writer, path: Path, tok: TokenizerFacts, config: dict) -> None:
    """SentencePiece BPE from tokenizer.model: pieces, scores and kinds as SentencePiece stores them."""
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
    if kind != "BPE":
        raise UserError(f"a SentencePiece {kind} model is not exported (llama.cpp's `llama` vocabulary is "
                        "SentencePiece BPE)", path)
    sp = SentencePieceProcessor(model_file=str(path))
    pieces = []
    for i in range(sp.vocab_size()):
        kind_of = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                   else BYTE if sp.IsByte(i) else NORMAL)
        pieces.append((sp.IdToPiece(i), sp.GetScore(i), kind_of))
    _write_llama_vocab(writer, pieces, tok, config, bool(proto.normalizer_spec.add_dummy_prefix))


def add_sentencepiece_json(writer, tok_json: dict, tok: TokenizerFacts, config: dict) -> None:
    """SentencePiece BPE from a converted tokenizer.json: scores are minus each normal piece's rank."""
    vocab = tok_json["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise UserError("the tokenizer.json vocabulary has gaps in its ids: not representable as a "
                        "SentencePiece vocabulary")
    special = {a["id"] for a in tok_json.get("added_tokens", []) if a.get("special")}
    unk = tok.unk_token_id
    pieces, rank = [], 0
    for i in range(len(by_id)):
        text = by_id[i]
        if i == unk:
            pieces.append((text, 0.0, UNKNOWN))
        elif i in special:
            pieces.append((text, 0.0, CONTROL))
        elif BYTE_PIECE.match(text):
            pieces.append((text, 0.0, BYTE))
        else:
            pieces.append((text, -float(rank), NORMAL))
            rank += 1
    pre = tok_json.get("pre_tokenizer") or {}
    add_prefix = pre.get("prepend_scheme", "always") != "never" if pre.get("type") == "Metaspace" else \
        "Prepend" in json.dumps(tok_json.get("normalizer") or {})
    _write_llama_vocab(writer, pieces, tok, config, add_prefix)


def _add_special_ids(writer, tok: TokenizerFacts, config: dict) -> None:
    bos = tok.bos_token_id if tok.bos_token_id is not None else config.get("bos_token_id")
    eos = tok.eos_token_id if tok.eos_token_id is not None else config.get("eos_token_id")
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos if isinstance(eos, int) else eos[0])
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    if tok.unk_token_id is not None:
        writer.add_unk_token_id(tok.unk_token_id)
    writer.add_add_bos_token(bool(bos is not None and tok.add_bos))
