"""Padding-free, token-budget scoring (benchmarks/packed.py) equals the padded path and the
plain per-choice computation; fixed few-shot prefixes computed once equal recomputation."""
from __future__ import annotations

import json
import random

import pytest
import torch

from pmcllama.benchmarks import load_benchmark, packed
from pmcllama.benchmarks.base import Item
from pmcllama.benchmarks.prompting import build
from pmcllama.benchmarks.scoring import build_requests, evaluate_items
from pmcllama.config import build_config
from pmcllama.errors import ConfigError
from pmcllama.evaluate import EvaluateConfig, run
from pmcllama.training import varlen


def shaped_items():
    """Single-token letters, yes/no/maybe, multi-token choices sharing a first token, a long
    context, a choice that is a prefix of another, and a trailing-space prompt."""
    long = " ".join(f"clause {i} about the kidney, the liver and the heart" for i in range(12))
    return [
        Item("a", "Question: Is the retina affected?\nAnswer:", [" yes", " no", " maybe"], 0),
        Item("b", "Short?", [" Abnormality of the eye", " Abnormality of the ear", " cardiac", " x y z"], 2),
        Item("c", long + "\nAnswer:", [" renal", " hepatic failure of the organ"], 1),
        Item("d", "Answer: ", ["yes", "no"], 1),
        Item("e", "Question: Which?\nA. x\nB. y\nC. z\nD. w\nAnswer:", [" A", " B", " C", " D"], 3),
        Item("f", "Pick one:", [" heart", " heart valve", " heart valve disease"], 0),
    ]


def padded(monkeypatch, *args, **kwargs):
    """evaluate_items with the segment attention refused: the right-padded path."""
    with monkeypatch.context() as m:
        m.setattr(varlen, "enable", lambda model, seq_len: None)
        return evaluate_items(*args, **kwargs)


def assert_close(a, b, tol=1e-4):
    for r, s in zip(a, b, strict=True):
        assert len(r["loglik"]) == len(s["loglik"])
        assert all(abs(x - y) < tol for x, y in zip(r["loglik"], s["loglik"])), (r["id"], r["loglik"], s["loglik"])
        assert (r["pred"], r["pred_norm"], r["truncated"]) == (s["pred"], s["pred_norm"], s["truncated"])


def test_packed_equals_padded_and_budget_is_respected(tiny_model, monkeypatch):
    model, tok = tiny_model
    items = shaped_items()
    assert varlen.enable(model, 512) is not None  # tiny-llama takes the padding-free path
    varlen.disable(model, "sdpa")
    calls = []
    real = packed.score_batch

    def spy(m, questions, *args):
        calls.append([q.tokens for q in questions])
        return real(m, questions, *args)

    monkeypatch.setattr(packed, "score_batch", spy)
    got = evaluate_items(model, tok, items, max_batch_tokens=60, progress=False)
    assert len(calls) > 1 and sum(len(c) for c in calls) == len(items)
    assert all(len(c) == 1 or sum(c) <= 60 for c in calls) and any(len(c) > 1 for c in calls)
    calls.clear()
    evaluate_items(model, tok, items, max_batch_tokens=100_000, batch_size=4, progress=False)
    assert [len(c) for c in calls] == [4, 2]
    one_forward = evaluate_items(model, tok, items, max_batch_tokens=100_000, progress=False)
    ref = padded(monkeypatch, model, tok, items, batch_size=1, progress=False)
    assert_close(got, ref)
    assert_close(one_forward, ref)
    assert model.config._attn_implementation == "sdpa"  # given back after scoring


def test_truncated_contexts_equal_padded(tiny_model, monkeypatch):
    model, tok = tiny_model
    items = shaped_items()
    got = evaluate_items(model, tok, items, max_length=12, progress=False)
    assert any(r["truncated"] for r in got) and not all(r["truncated"] for r in got)
    assert_close(got, padded(monkeypatch, model, tok, items, max_length=12, batch_size=2, progress=False))


def test_layout_shares_a_questions_prompt_across_its_choices(tiny_tokenizer):
    item = shaped_items()[1]
    reqs = build_requests(tiny_tokenizer, [item], 2048)[0]
    q = packed.layout(reqs, 0)
    distinct = {r.inp for r in reqs}  # " ...eye" and " ...ear" differ in the last token only
    assert len(q.context) > 0 and len(q.tails) == len(distinct) == 3
    assert q.tokens == len(q.context) + sum(len(inp) - len(q.context) for inp in distinct)
    single = packed.layout(build_requests(tiny_tokenizer, [shaped_items()[4]], 2048)[0], 0)
    assert single.tails == [()] and single.tokens == len(build_requests(
        tiny_tokenizer, [shaped_items()[4]], 2048)[0][0].inp)  # letters: one sequence per question


def test_plan_respects_budget_and_batch_size():
    rng = random.Random(0)
    costs = [rng.randint(1, 300) for _ in range(200)] + [5000]
    for budget, cap in [(1000, None), (1000, 7), (50, None), (4096, 64)]:
        batches = packed.plan(costs, budget, cap)
        assert sorted(i for b in batches for i in b) == list(range(len(costs)))
        flat = [costs[i] for b in batches for i in b]
        assert flat == sorted(flat, reverse=True)  # longest first
        for b in batches:
            assert len(b) == 1 or sum(costs[i] for i in b) <= budget
            assert cap is None or len(b) <= cap
        assert len(batches) < len(costs) or budget == 50
    assert [len(b) for b in packed.plan([10] * 10, 35, None)] == [3, 3, 3, 1]


def fixed_fewshot_items():
    pool = [Item(f"p{i}", f"Question: Which organ filters blood, case {i}?\nA. Liver\nB. Kidney\nAnswer:",
                 [" A", " B"], i % 2) for i in range(6)]
    items = [Item(f"q{i}", f"Question: What is organ {i}?\nA. Lung\nB. Skin\nAnswer:", [" A", " B"], i % 2)
             for i in range(5)]
    items.append(Item("t", "Question: What is organ t?\nA. Lung\nB. Skin\nAnswer:",
                      [" lung tissue", " skin tissue"], 0))
    return build(items, "loglik", 3, pool, seed=0, fixed=True), pool


def test_fewshot_fixed_shares_the_prefix_and_equals_recomputation(tiny_model, monkeypatch):
    model, tok = tiny_model
    items, pool = fixed_fewshot_items()
    heads = {it.prompt.split("Question: What")[0] for it in items}
    assert len(heads) == 1  # the same three examples before every question
    reqs = build_requests(tok, items, 2048)
    skip = packed.shared_prefix(reqs)
    assert skip >= packed.MIN_SHARED_PREFIX
    assert skip <= min(len(r.inp) - len(r.cont) for rs in reqs for r in rs)
    cached = evaluate_items(model, tok, items, max_batch_tokens=80, progress=False)
    again = evaluate_items(model, tok, items, max_batch_tokens=80, share_prefix=False, progress=False)
    assert_close(cached, again)
    assert_close(cached, padded(monkeypatch, model, tok, items, batch_size=1, progress=False))
    twin = Item("p0", pool[0].prompt, [" A", " B"], 0)  # an example never precedes itself
    (alone,) = build([twin], "loglik", 3, pool, seed=0, fixed=True)
    assert alone.prompt.count(pool[0].prompt) == 1 and alone.prompt.endswith(pool[0].prompt)


def test_scores_on_prepacked_layers_equal_the_plain_models(tiny_model):
    """`pmcllama evaluate` scores fp32 on oneDNN-prepacked Linear layers (evaluate.load_for),
    the output layer included: the same logliks and predictions as PyTorch's layers."""
    from pmcllama import models
    from pmcllama.evaluate import load_for
    from pmcllama.prepack import PackedLinear

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    model, tok = tiny_model
    fast, _ = load_for(models.resolve("tiny-llama"), "loglik", "fp32")
    assert type(fast.get_output_embeddings()) is PackedLinear
    for items in (shaped_items(), fixed_fewshot_items()[0]):  # the second: a prefix computed once
        assert_close(evaluate_items(fast, tok, items, max_batch_tokens=80, progress=False),
                     evaluate_items(model, tok, items, max_batch_tokens=80, progress=False))


def test_stage_fewshot_fixed_and_token_budget(tmp_path):
    rows = [{"question": f"Which organ {i}?", "answer_idx": "ABCD"[i % 4],
             "options": {"A": "Liver", "B": "Heart", "C": "Lung", "D": "Skin"}} for i in range(16)]
    test, train = tmp_path / "test_part.jsonl", tmp_path / "train_part.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]), encoding="utf-8")
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[6:]), encoding="utf-8")
    cfg = {"model": "tiny-llama", "bootstrap": 0, "shots": 2, "fewshot_fixed": True, "max_batch_tokens": 200,
           "out": str(tmp_path / "e"),
           "benchmarks": [{"name": "mq", "format": "medqa", "path": str(test), "fewshot_path": str(train)}]}
    out = run(build_config(EvaluateConfig, cfg))
    r = json.loads((out / "results.json").read_text())["mq"]
    assert r["fewshot_fixed"] is True and r["n"] == 6
    items = build(load_benchmark("medqa", test).items, "loglik", 2, load_benchmark("medqa", train).items, 0,
                  fixed=True)
    recs = [json.loads(x) for x in (out / "predictions" / "mq.jsonl").read_text().splitlines()]
    assert [x["prompt_sha256"] for x in recs] == [it.prompt_sha256 for it in items]
    with pytest.raises(ConfigError, match="fewshot_fixed applies when shots > 0"):
        build_config(EvaluateConfig, {**cfg, "shots": 0, "benchmarks": []})


@pytest.mark.smollm2
@pytest.mark.shared
@pytest.mark.slow
def test_smollm2_every_shape_equals_padded(smollm2, shared_data, monkeypatch):
    from pmcllama.models import load_model

    model, tok = load_model(smollm2)
    b = shared_data / "benchmarks"
    pqa = load_benchmark("pubmedqa", b / "pubmedqa/ori_pqal_trainval.json").items[:3]
    mq = load_benchmark("medqa", b / "format_samples/medqa_us_4options_sample.jsonl").items
    cloze = load_benchmark("medqa", b / "format_samples/medqa_us_4options_sample.jsonl", "text").items[:2]
    mm = load_benchmark("medmcqa", b / "train/medmcqa_train_subset_340.jsonl").items
    mmlu = load_benchmark("mmlu", b / "format_samples/mmlu_anatomy_test_sample.csv").items[:3]
    items = pqa + mq[:3] + cloze + mm[:3] + mmlu
    got = evaluate_items(model, tok, items, max_batch_tokens=1500, progress=False)
    assert_close(got, padded(monkeypatch, model, tok, items, batch_size=2, progress=False))
    fixed = build(mm[20:24], "loglik", 2, mm[:20], seed=0, fixed=True)
    assert packed.shared_prefix(build_requests(tok, fixed, 8192)) >= packed.MIN_SHARED_PREFIX
    assert_close(evaluate_items(model, tok, fixed, progress=False),
                 padded(monkeypatch, model, tok, fixed, batch_size=2, progress=False))
    short = evaluate_items(model, tok, pqa + cloze, max_length=200, progress=False)
    assert all(r["truncated"] for r in short[:3])
    assert_close(short, padded(monkeypatch, model, tok, pqa + cloze, max_length=200, batch_size=2,
                               progress=False))


def test_a_short_header_common_to_every_prompt_is_computed_once(tiny_model, monkeypatch):
    """MMLU's subject header (15 tokens of SmolLM2's tokenizer) is shared: a common prefix of 8
    or more tokens runs once, with the same logliks as recomputing it in every prompt."""
    model, tok = tiny_model
    header = "Anatomy questions.\n\n"
    items = [Item(str(i), f"{header}Question {i}: where is the {w}?" + " and" * (i % 3) + "\nAnswer:",
                  [" A", " B", " C", " D"], i % 4) for i, w in enumerate(["liver", "heart", "spleen", "aorta", "lung"])]
    reqs = build_requests(tok, items, 2048)
    skip = packed.shared_prefix(reqs)
    assert packed.MIN_SHARED_PREFIX <= skip < 16
    seen = []
    real = packed.shared_prefix
    monkeypatch.setattr(packed, "shared_prefix", lambda r: seen.append(real(r)) or seen[-1])
    shared = evaluate_items(model, tok, items, max_batch_tokens=60, progress=False)
    assert seen == [skip]
    again = evaluate_items(model, tok, items, max_batch_tokens=60, share_prefix=False, progress=False)
    assert_close(shared, again)


def test_the_output_layer_and_the_last_mlp_run_only_at_the_scored_positions(tiny_model):
    """One-token choices share their prompt's last position (the output layer runs there once,
    not once per choice), and the last layer's MLP runs only where the output layer reads; the
    logliks are still each request's own full forward's."""
    model, tok = tiny_model
    items = [it for it in shaped_items() if it.id in ("a", "e")]  # " yes"/" no"/" maybe", " A".." D"
    items.append(Item("g", "Which organ?\nAnswer:", [" heart valve", " heart", " renal failure"], 1))
    rows: dict[str, list[int]] = {"head": [], "last": [], "first": []}
    watched = (("head", model.lm_head), ("last", model.model.layers[-1].mlp), ("first", model.model.layers[0].mlp))
    hooks = [m.register_forward_hook(lambda mod, args, out, key=key: rows[key].append(args[0].numel() // args[0].shape[-1]))
             for key, m in watched]
    try:
        got = evaluate_items(model, tok, items, progress=False)
    finally:
        for h in hooks:
            h.remove()
    requests = build_requests(tok, items, 2048)
    # a question's prompt's last position, then one per token of each distinct choice tail
    positions = sum(1 + sum(len(inp) - (len(reqs[0].inp) - len(reqs[0].cont) + 1) for inp in {r.inp for r in reqs})
                    for reqs in requests)
    assert positions < sum(len(r.cont) for reqs in requests for r in reqs)  # fewer than the tokens scored
    assert sum(rows["head"]) == sum(rows["last"]) == positions
    assert sum(rows["first"]) > 3 * positions  # every token of the forward
    assert "forward" not in vars(model.model.layers[-1])  # the layer's own forward again
    with torch.no_grad():
        for rec, reqs in zip(got, requests, strict=True):
            for ll, r in zip(rec["loglik"], reqs, strict=True):
                logp = torch.log_softmax(model(torch.tensor([r.inp])).logits[0].float(), -1)
                start = len(r.inp) - len(r.cont)
                want = sum(logp[start + i, t].item() for i, t in enumerate(r.cont))
                assert abs(ll - want) < 1e-4


def test_a_last_layer_with_a_forward_of_its_own_is_run_whole(tiny_model, monkeypatch):
    """A forward someone else set on the last layer (another library's hook) is called, not
    bypassed: that layer then runs whole, and the scores are the same."""
    model, tok = tiny_model
    items = [it for it in shaped_items() if it.id in ("a", "e")]
    want = evaluate_items(model, tok, items, progress=False)
    last, calls = model.model.layers[-1], []
    real = last.forward

    def hooked(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(last, "forward", hooked)
    got = evaluate_items(model, tok, items, progress=False)
    assert calls and all(len(shape) == 3 for shape in calls)  # the whole (1, tokens, hidden) row
    assert_close(got, want)
    assert vars(last)["forward"] is hooked
