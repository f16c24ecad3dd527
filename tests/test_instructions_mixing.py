"""Mixing: per-source weights (down- and up-sampling), caps, and token statistics."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from pmcllama.config import build_config
from pmcllama.data.mixing import downsample, summary, token_counter, upsample
from pmcllama.instructions import InstructionsConfig, run


def source(tmp_path, name, n, **kw):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"{name} question {i}?", "output": f"Answer {i}."}) + "\n"
                            for i in range(n)))
    return {"name": name, "format": "alpaca", "paths": [str(path)], **kw}


def build(tmp_path, sources, out="out", **kw):
    cfg = build_config(InstructionsConfig, {"out": str(tmp_path / out), "sources": sources, **kw})
    folder = run(cfg)
    read = lambda f: [json.loads(line) for line in (folder / f).read_text().splitlines()]  # noqa: E731
    return folder, read("train.jsonl"), read("val.jsonl")


def test_weights_down_and_up(tmp_path):
    srcs = [source(tmp_path, "a", 100, weight=0.3), source(tmp_path, "b", 40, weight=2.5), source(tmp_path, "c", 20)]
    folder, train, val = build(tmp_path, srcs, val_fraction=0.1)
    stats = json.loads((folder / "stats.json").read_text())["sources"]
    assert stats["a"]["downsampled"] == 70 and stats["a"]["train"] + stats["a"]["val"] == 30
    nb_train = stats["b"]["train"] - stats["b"]["repeated"]
    assert stats["b"]["repeated"] == nb_train + round(nb_train * 0.5)
    assert stats["b"]["val"] + nb_train == 40
    counts = Counter(r["source"] for r in train)
    assert counts == {"a": stats["a"]["train"], "b": stats["b"]["train"], "c": stats["c"]["train"]}
    ids = [r["id"] for r in train]
    assert len(ids) == len(set(ids)) and sum("~" in i for i in ids) == stats["b"]["repeated"]
    # no copy of a training record is in validation
    base = {i.split("~")[0] for i in ids}
    assert not base & {r["id"] for r in val}
    # deterministic: same seed, same result; another seed, another sample
    assert build(tmp_path, srcs, out="again", val_fraction=0.1)[1] == train
    assert build(tmp_path, srcs, out="other", val_fraction=0.1, seed=1)[1] != train


def test_downsample_upsample_units():
    recs = [{"id": f"s-{i}", "source": "s", "messages": []} for i in range(10)]
    kept, dropped = downsample(recs, {"s": 0.25}, seed=0)
    assert len(kept) == 2 and dropped == {"s": 8} and kept == [r for r in recs if r in kept]  # order kept
    assert downsample(recs, {"s": 0.01}, seed=0)[0].__len__() == 1  # at least one record
    out, added = upsample(recs, {"s": 3}, seed=0)
    assert len(out) == 30 and added == {"s": 20} and out[:10] == recs
    assert Counter(r["id"].split("~")[0] for r in out) == {f"s-{i}": 3 for i in range(10)}
    assert upsample(recs, {"s": 1.0}, seed=0) == (recs, Counter())


def test_max_records_caps_every_format(tmp_path):
    obo = tmp_path / "t.obo"
    obo.write_text("format-version: 1.2\n\n" + "".join(
        f"[Term]\nid: T:{i}\nname: Term {i}\ndef: \"Def {i}.\" []\n" + ("is_a: T:0\n" if i else "") + "\n"
        for i in range(8)))
    srcs = [source(tmp_path, "a", 30, max_records=7), {"name": "kg", "format": "kg", "ontology": str(obo),
                                                       "max_records": 5, "tasks": ["description", "relation"]}]
    folder, train, val = build(tmp_path, srcs, val_fraction=0)
    stats = json.loads((folder / "stats.json").read_text())["sources"]
    assert stats["a"]["records"] == 7 and stats["kg"]["records"] == 5
    assert [r["id"] for r in train if r["source"] == "a"] == [f"a-{i}" for i in range(7)]


def test_summary_percentiles():
    s = summary(list(range(1, 101)))
    assert s == {"records": 100, "sum": 5050, "mean": 50.5, "p50": 50, "p95": 95, "max": 100}
    assert summary([]) == {"records": 0, "sum": 0, "mean": 0, "p50": 0, "p95": 0, "max": 0}


def test_token_statistics(tmp_path, tiny_tokenizer, capsys):
    srcs = [source(tmp_path, "a", 12), source(tmp_path, "b", 5, task="dialogue")]
    folder, train, val = build(tmp_path, srcs, val_fraction=0, tokenizer="tiny-llama")
    tokens = json.loads((folder / "stats.json").read_text())["tokens"]
    count = token_counter(tiny_tokenizer)
    expected = count([r["messages"] for r in train])
    assert tokens["tokenizer"] == "tiny-llama"
    assert tokens["train"]["all"] == summary(expected)
    assert tokens["train"]["sources"]["b"] == summary(expected[12:])
    assert set(tokens["train"]["tasks"]) == {"a/qa", "b/dialogue"}
    assert tokens["val"]["all"]["records"] == 0
    # counted as training renders them: with the chat template
    text = tiny_tokenizer.apply_chat_template(train[0]["messages"], tokenize=False)
    assert expected[0] == len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    out = capsys.readouterr().out
    assert "train tokens (tiny-llama)" in out and "records     mean   p50   p95    max" in out
    line = next(ln for ln in out.splitlines() if "b/dialogue" in ln)
    t = tokens["train"]["tasks"]["b/dialogue"]
    assert line.split()[-5:] == [str(t["records"]), str(t["mean"]), str(t["p50"]), str(t["p95"]), str(t["max"])]


def test_no_tokenizer_no_token_stats(tmp_path):
    folder, _, _ = build(tmp_path, [source(tmp_path, "a", 3)])
    assert "tokens" not in json.loads((folder / "stats.json").read_text())


@pytest.mark.parametrize("weight", [0.5, 2])
def test_weight_is_in_the_stats(tmp_path, weight):
    folder, train, _ = build(tmp_path, [source(tmp_path, "a", 10, weight=weight)], val_fraction=0)
    assert json.loads((folder / "stats.json").read_text())["sources"]["a"]["weight"] == weight
    assert len(train) == 10 * weight
