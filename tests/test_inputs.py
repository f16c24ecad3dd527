"""The input layer: one JSON Lines loop, strict or lenient, and the rationale cache over it."""
from __future__ import annotations

import json

import pytest

from pmcllama.errors import UserError
from pmcllama.inputs import array_rows, iter_jsonl, jsonl_rows, read_text, whole_json
from pmcllama.rationales import end_last_line, read_cache
from pmcllama.training.data import read_chat_jsonl
from pmcllama.training.metrics import truncate_metrics


def test_iter_jsonl_strict_names_line_and_column(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n{"b": 2}\n{oops\n', encoding="utf-8")
    rows = iter_jsonl(p)
    assert next(rows) == (1, {"a": 1}) and next(rows) == (3, {"b": 2})
    with pytest.raises(UserError, match=r"a.jsonl:4: line is not valid JSON: .*\(column 2\)"):
        next(rows)


def test_iter_jsonl_torn_tail_only_at_the_end(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"a": 1}\n{"b": ', encoding="utf-8")
    assert list(iter_jsonl(p, torn_tail_ok=True)) == [(1, {"a": 1})]
    p.write_text('{"b": \n{"a": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"c.jsonl:1:"):
        list(iter_jsonl(p, torn_tail_ok=True))


def test_iter_jsonl_keeps_u2028_inside_strings(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_text(json.dumps({"t": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert list(iter_jsonl(p)) == [(1, {"t": "a\u2028b"})]


def test_jsonl_rows_yields_errors_instead_of_raising(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n[1,\n')
    rows = list(jsonl_rows(p))
    assert rows[0] == (1, {"a": 1}, None)
    assert rows[1][0] == 2 and rows[1][2].startswith("not UTF-8 text (column 8: byte 0xff")
    assert "\ufffd" in rows[1][1]  # shown printable, safe to write into rejected.jsonl
    assert rows[2][0] == 3 and rows[2][1] == "[1," and rows[2][2].startswith("not valid JSON: ")


def test_array_rows_and_whole_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b'[{"a": "ok"}, {"a": "\xfe"}]')
    data = json.loads(read_text(p, lenient=True))
    rows = list(array_rows(data))
    assert rows[0] == (0, {"a": "ok"}, None)
    assert rows[1][0] == 1 and rows[1][2].startswith("not UTF-8 text") and "\ufffd" in rows[1][1]
    assert whole_json('{"a": 1}') == {"a": 1} and whole_json('{"a": 1}\n{"b": 2}') is None


def test_rationale_cache_tolerates_a_torn_tail_and_reports_bad_lines(tmp_path):
    p = tmp_path / "cache.jsonl"
    good = json.dumps({"key": "k1", "rationale": "r1"})
    p.write_text(good + '\n{"key": "k2", "ratio', encoding="utf-8")
    assert read_cache(p) == {"k1": "r1"}
    assert end_last_line(p) and p.read_text(encoding="utf-8") == good + "\n"  # appends start a fresh line
    p.write_text(good, encoding="utf-8")  # a complete last row without its newline is kept
    assert not end_last_line(p) and p.read_text(encoding="utf-8") == good + "\n"
    p.write_text('{"key": "k2", "ratio\n' + good + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"cache.jsonl:1: line is not valid JSON"):
        read_cache(p)
    p.write_text(good + "\n" + json.dumps({"key": "k3"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"cache.jsonl:2: not a rationale cache row"):
        read_cache(p)


def test_read_chat_jsonl_names_a_non_utf8_line(tmp_path):
    p = tmp_path / "train.jsonl"
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    p.write_bytes(json.dumps({"messages": chat}).encode() + b'\n{"messages": "\xff"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:2: not UTF-8 text"):
        read_chat_jsonl(p)


def test_truncate_metrics_names_a_bad_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"st\n{"step": 2}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: line is not valid JSON"):
        truncate_metrics(path, 5)
