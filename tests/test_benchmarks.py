"""Benchmark loaders, log-likelihood scoring and statistics (pmcllama.benchmarks)."""
from __future__ import annotations

import json
import math

import pytest

from pmcllama.benchmarks import load_benchmark, medqa, pubmedqa
from pmcllama.benchmarks.base import Item
from pmcllama.benchmarks.scoring import (
    build_requests, choice_chars, evaluate_items, special_prefix, split_whitespace,
)
from pmcllama.benchmarks.stats import baselines, bootstrap_ci, pred_share, summarize
from pmcllama.errors import UserError

PQA = {
    "111": {"QUESTION": "Does aspirin help?", "CONTEXTS": ["Background one.", "Methods two."],
            "LABELS": ["BACKGROUND", "METHODS"], "final_decision": "yes", "LONG_ANSWER": "x"},
    "222": {"QUESTION": "Is it safe?", "CONTEXTS": ["Only part."], "final_decision": "maybe"},
    "333": {"QUESTION": "Is it cheap?", "CONTEXTS": ["A.", "B.", "C."], "final_decision": "no"},
}
MQ4 = {"question": "Which drug?", "answer": "Beta", "answer_idx": "B", "meta_info": "step1",
       "options": {"A": "Alpha", "B": "Beta", "C": "Gamma", "D": "Delta"}}
MQ5 = {"question": "Which organ?", "answer": "Eye", "answer_idx": "E",
       "options": {"A": "Liver", "B": "Heart", "C": "Lung", "D": "Skin", "E": "Eye"}}


def write_json(path, data):
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


# ---------------------------------------------------------------- loaders

def test_pubmedqa_prompts_and_gold(tmp_path):
    b = load_benchmark("pubmedqa", write_json(tmp_path / "ori_pqal.json", PQA))
    assert [it.id for it in b.items] == ["111", "222", "333"]
    assert b.items[0].prompt == (
        "Abstract: Background one.\nMethods two.\nQuestion: Does aspirin help?\nAnswer:")
    assert b.items[0].choices == [" yes", " no", " maybe"]
    assert [it.gold for it in b.items] == [0, 2, 1]
    assert b.template == "pubmedqa-lmeval-v1" and b.labels == ["yes", "no", "maybe"]
    assert len(load_benchmark("pubmedqa", tmp_path / "ori_pqal.json", limit=2).items) == 2


def test_pubmedqa_ids_restrict(tmp_path):
    data = write_json(tmp_path / "ori_pqal.json", PQA)
    truth = write_json(tmp_path / "test_ground_truth.json", {"333": "no", "111": "yes"})
    assert [it.id for it in pubmedqa.load(data, ids=truth).items] == ["111", "333"]
    assert [it.id for it in pubmedqa.load(data, ids=write_json(tmp_path / "l.json", [222])).items] == ["222"]
    with pytest.raises(UserError, match="not in the benchmark"):
        pubmedqa.load(data, ids=write_json(tmp_path / "m.json", ["999"]))
    with pytest.raises(UserError, match="pmid 111: label 'no' differs"):
        pubmedqa.load(data, ids=write_json(tmp_path / "w.json", {"111": "no"}))


def test_pubmedqa_bad_inputs(tmp_path):
    bad = dict(PQA, **{"444": {"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "perhaps"}})
    with pytest.raises(UserError, match="pmid 444: final_decision 'perhaps'") as e:
        pubmedqa.load(write_json(tmp_path / "a.json", bad))
    assert e.value.path.endswith("a.json") and e.value.line is not None
    with pytest.raises(UserError, match="pmid 222: missing field 'CONTEXTS'"):
        pubmedqa.load(write_json(tmp_path / "b.json", {"222": {"QUESTION": "q", "final_decision": "no"}}))
    dup = tmp_path / "dup.json"
    dup.write_text('{"1": {"QUESTION": "q", "CONTEXTS": [], "final_decision": "no"},\n'
                   ' "1": {"QUESTION": "q", "CONTEXTS": [], "final_decision": "no"}}\n')
    with pytest.raises(UserError, match="duplicate pmid '1'") as e:
        pubmedqa.load(dup)
    assert e.value.line == 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"1": {"QUESTION": "q",\n "CONTEXTS": [}\n')
    with pytest.raises(UserError, match="not valid JSON") as e:
        pubmedqa.load(broken)
    assert e.value.line == 2
    with pytest.raises(UserError, match="JSON Lines.*format: medqa"):
        pubmedqa.load(write_jsonl(tmp_path / "m.jsonl", [MQ4, MQ5]))
    with pytest.raises(UserError, match="label file"):
        pubmedqa.load(write_json(tmp_path / "t.json", {"1": "yes"}))
    with pytest.raises(UserError, match="no items"):
        pubmedqa.load(write_json(tmp_path / "e.json", {}))
    with pytest.raises(UserError, match="file not found"):
        pubmedqa.load(tmp_path / "absent.json")


def test_medqa_letters_4_and_5_options(tmp_path):
    b = load_benchmark("medqa", write_jsonl(tmp_path / "q.jsonl", [MQ4, "", MQ5]))
    first, second = b.items
    assert first.prompt == "Question: Which drug?\nA. Alpha\nB. Beta\nC. Gamma\nD. Delta\nAnswer:"
    assert first.choices == [" A", " B", " C", " D"] and first.gold == 1 and first.id == "line-1"
    assert second.prompt == ("Question: Which organ?\nA. Liver\nB. Heart\nC. Lung\nD. Skin\nE. Eye\n"
                             "Answer:")
    assert second.choices == [" A", " B", " C", " D", " E"] and second.gold == 4
    assert second.id == "line-3" and b.labels == list("ABCDE")
    assert b.template == "medqa-letters-lmeval-v1" and not b.warnings


def test_medqa_text_mode_and_ids(tmp_path):
    rows = [dict(MQ4, id="q1"), dict(MQ5, id="q2", answer="Liver")]
    b = medqa.load(write_jsonl(tmp_path / "q.jsonl", rows), choices="text", limit=1)
    assert [it.id for it in b.items] == ["q1"]
    assert b.items[0].prompt == "Question: Which drug?\nAnswer:"
    assert b.items[0].choices == [" Alpha", " Beta", " Gamma", " Delta"]
    assert b.template == "medqa-text-cloze-v1"
    assert b.warnings and "1 record(s)" in b.warnings[0]  # q2's answer text differs from E


def test_medqa_bad_inputs(tmp_path):
    cases = [
        ([MQ4, "{not json"], "line is not valid JSON", 2),
        ([MQ4, {k: v for k, v in MQ4.items() if k != "answer_idx"}], "missing field 'answer_idx'", 2),
        ([dict(MQ4, answer_idx="E")], "answer_idx 'E' is not one of the options A, B, C, D", 1),
        ([dict(MQ4, id="x"), dict(MQ5, id="x")], "duplicate id 'x' \\(first on line 1\\)", 2),
        ([dict(MQ4, options={"A": "a", "C": "c"})], "not A, B, C", 1),
        (["[1, 2]"], "expected a JSON object", 1),
    ]
    for i, (rows, message, line) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", rows)
        with pytest.raises(UserError, match=message) as e:
            medqa.load(path)
        assert e.value.line == line and e.value.path == str(path)
        assert f"bad{i}.jsonl:{line}: " in str(e.value)
    with pytest.raises(UserError, match="format: pubmedqa"):
        medqa.load(write_json(tmp_path / "ori_pqal.json", PQA))
    one_line = tmp_path / "one_line.json"
    one_line.write_text(json.dumps(PQA))
    with pytest.raises(UserError, match="format: pubmedqa"):
        medqa.load(one_line)
    with pytest.raises(UserError, match="no items"):
        medqa.load(write_jsonl(tmp_path / "empty.jsonl", ["", ""]))
    with pytest.raises(UserError, match="pubmedqa only"):
        load_benchmark("medqa", tmp_path / "bad0.jsonl", ids="x.json")


# ---------------------------------------------------------------- scoring

def plain_loglik(model, tok, prompt, choice):
    """Unbatched reference: one full sequence, no padding, lm-eval's token split."""
    import torch

    ctx = tok(prompt, add_special_tokens=False)["input_ids"]
    whole = tok(prompt + choice, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def mixed_items():
    return [
        Item("a", "Question: Is the retina affected?\nAnswer:", [" yes", " no", " maybe"], 0),
        Item("b", "Short?", [" Abnormality of the eye", " B", " cardiac", " x y z w"], 2),
        Item("c", "A much longer prompt about the phenotype of the kidney and the liver, with"
             " several clauses to make the sequence longer than the others.\nAnswer:",
             [" renal", " hepatic failure of the organ"], 1),
        Item("d", "Answer: ", ["yes", "no"], 1),  # trailing space moves into the continuation
    ]


@pytest.mark.slow
def test_batched_equals_unbatched(tiny_model):
    model, tok = tiny_model
    items = mixed_items()
    lengths = {len(tok(c, add_special_tokens=False)["input_ids"]) for it in items for c in it.choices}
    assert len(lengths) > 1  # choices of different token lengths
    records = evaluate_items(model, tok, items, batch_size=3, progress=False)
    for it, rec in zip(items, records):
        for choice, got in zip(it.choices, rec["loglik"]):
            ctx, cont = split_whitespace(it.prompt, choice)
            assert abs(got - plain_loglik(model, tok, ctx, cont)) < 1e-4
        assert rec["pred"] == max(range(len(it.choices)), key=lambda j: rec["loglik"][j])
        normed = [ll / choice_chars(c) for ll, c in zip(rec["loglik"], it.choices)]
        assert rec["pred_norm"] == max(range(len(normed)), key=lambda j: normed[j])
        assert rec["correct"] == (rec["pred"] == it.gold) and not rec["truncated"]
    one = evaluate_items(model, tok, items, batch_size=1, progress=False)
    assert all(abs(a - b) < 1e-4 for r, s in zip(records, one) for a, b in zip(r["loglik"], s["loglik"]))


def test_full_logits_path_and_bf16(tiny_model, monkeypatch):
    from pmcllama.benchmarks import scoring

    model, tok = tiny_model
    items = mixed_items()
    fast = evaluate_items(model, tok, items, batch_size=4, progress=False)
    monkeypatch.setattr(scoring, "_decoder_and_head", lambda m: (None, None))
    full = evaluate_items(model, tok, items, batch_size=4, progress=False)
    assert all(abs(a - b) < 1e-4 for r, s in zip(fast, full) for a, b in zip(r["loglik"], s["loglik"]))
    monkeypatch.undo()
    bf16 = evaluate_items(model, tok, items, batch_size=4, precision="bf16", progress=False)
    assert all(math.isfinite(x) and x < 0 for r in bf16 for x in r["loglik"])


def test_left_truncation(tiny_model):
    import torch

    model, tok = tiny_model
    item = Item("t", "one two three four five six seven eight nine ten eleven twelve", [" yes", " no"], 0)
    rec = evaluate_items(model, tok, [item], max_length=8, progress=False)[0]
    assert rec["truncated"]
    for choice, got in zip(item.choices, rec["loglik"]):
        ctx = tok(item.prompt, add_special_tokens=False)["input_ids"]
        whole = tok(item.prompt + choice, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx):]
        inp = whole[:-1][-8:]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([inp])).logits[0], -1)
        ref = sum(float(logp[len(inp) - len(cont) + k, t]) for k, t in enumerate(cont))
        assert abs(got - ref) < 1e-4


def test_bos_prefix_and_split():
    class Fake:
        eos_token_id = 2

        def __call__(self, text, add_special_tokens=True, verbose=True):
            def enc(t):
                return ([1] if add_special_tokens else []) + [ord(c) for c in t] + ([2] if add_special_tokens else [])
            return {"input_ids": [enc(t) for t in text] if isinstance(text, list) else enc(text)}

    assert special_prefix(Fake()) == [1]
    req = build_requests(Fake(), [Item("x", "ab", [" c"], 0)], 100)[0][0]
    assert req.inp == (1, ord("a"), ord("b"), ord(" ")) and req.cont == [ord(" "), ord("c")]
    assert split_whitespace("Answer: ", "yes") == ("Answer:", " yes")
    assert choice_chars(" maybe") == 5 and choice_chars("A") == 1


# ---------------------------------------------------------------- statistics

def test_bootstrap_ci_contains_accuracy_and_is_seeded():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 5
    acc = sum(values) / len(values)
    lo, hi = bootstrap_ci(values, 1000, seed=3)
    assert lo <= acc <= hi and 0.0 <= lo < hi <= 1.0
    assert bootstrap_ci(values, 1000, seed=3) == [lo, hi]
    assert bootstrap_ci(values, 1000, seed=4) != [lo, hi]
    assert bootstrap_ci(values, 0) is None and bootstrap_ci([], 100) is None


def test_baselines_hand_made():
    golds = [0, 0, 1, 2, 0, 3, 1, 0]  # A A B C A D B A
    b = baselines(golds, [4] * 8, list("ABCD"))
    assert b["majority"] == 0.5 and b["majority_choice"] == "A"
    assert b["constant_choice"]["per_choice"] == [0.5, 0.25, 0.125, 0.125]
    assert b["constant_choice"]["max"] == 0.5
    assert b["random"] == 0.25
    assert baselines([0, 1, 4], [3, 3, 5])["random"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 5) / 3)
    assert pred_share([0, 0, 0, 1], 3, ["yes", "no", "maybe"]) == {"yes": 0.75, "no": 0.25, "maybe": 0.0}


def test_summarize_counts():
    recs = [{"gold": g, "pred": p, "correct": g == p, "correct_norm": g == 0, "truncated": t}
            for g, p, t in [(0, 0, False), (1, 0, True), (2, 2, False), (0, 1, False)]]
    s = summarize(recs, [3] * 4, ["yes", "no", "maybe"], n_boot=200, seed=1)
    assert s["n"] == 4 and s["acc"] == 0.5 and s["acc_norm"] == 0.5 and s["truncated"] == 1
    assert s["acc_ci95"][0] <= 0.5 <= s["acc_ci95"][1]
    assert s["pred_share"] == {"yes": 0.5, "no": 0.25, "maybe": 0.25}
