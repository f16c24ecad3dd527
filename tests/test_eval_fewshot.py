"""k-shot prompts, chat template, what results.json records, and bad benchmark input."""
from __future__ import annotations

import json

import pytest

from pmcllama.benchmarks import load_benchmark, medqa, pubmedqa
from pmcllama.benchmarks.base import Item
from pmcllama.benchmarks.prompting import build, draw_examples, fewshot_prompt, template_name
from pmcllama.config import build_config
from pmcllama.errors import UserError
from pmcllama.evaluate import EvaluateConfig, run


def mq_rows(n, start=0):
    return [{"question": f"Which organ {i}?", "answer_idx": "ABCD"[i % 4],
             "options": {"A": "Liver", "B": "Heart", "C": "Lung", "D": "Skin"}} for i in range(start, start + n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pool_items(n):
    return [Item(f"p{i}", f"Question: Q{i}?\nA. x\nB. y\nAnswer:", [" A", " B"], i % 2) for i in range(n)]


def test_draws_are_deterministic_and_never_the_item():
    pool = pool_items(12)
    item = Item("p3", "Question: Q3?\nA. x\nB. y\nAnswer:", [" A", " B"], 1)
    a = draw_examples(item, pool, 3, seed=0)
    assert a == draw_examples(item, pool, 3, seed=0)
    others = [Item(f"z{i}", f"Question: Z{i}?\nA. x\nB. y\nAnswer:", [" A", " B"], 0) for i in range(5)]
    shuffled = build(others[::-1] + [item], "loglik", 3, pool, seed=0)
    assert shuffled[-1].prompt == build([item], "loglik", 3, pool, seed=0)[0].prompt  # order-free
    assert all(ex.id != "p3" for ex in a) and len({ex.id for ex in a}) == 3
    assert [ex.id for ex in a] != [ex.id for ex in draw_examples(item, pool, 3, seed=1)] or \
        [ex.id for ex in a] != [ex.id for ex in draw_examples(item, pool, 3, seed=2)]
    for seed in range(20):  # the item itself (same id, or same prompt) is never drawn
        twin = Item("other-id", item.prompt, item.choices, 1)
        assert all(ex.prompt != item.prompt for ex in draw_examples(twin, pool, 11, seed))
    with pytest.raises(UserError, match="only 11 other items"):
        draw_examples(item, pool, 12, seed=0)


def test_fewshot_layout_is_lm_evals():
    ex = [Item("e1", "Question: A?\nA. x\nB. y\nAnswer:", [" A", " B"], 1),
          Item("e2", "Question: B?\nA. x\nB. y\nAnswer:", [" A", " B"], 0)]
    item = Item("q", "Question: C?\nA. x\nB. y\nAnswer:", [" A", " B"], 0)
    assert fewshot_prompt(item, ex) == ("Question: A?\nA. x\nB. y\nAnswer: B\n\n"
                                        "Question: B?\nA. x\nB. y\nAnswer: A\n\n"
                                        "Question: C?\nA. x\nB. y\nAnswer:")
    head = "The following are multiple choice questions (with answers) about anatomy.\n\n"
    mm = [Item(e.id, head + e.prompt[10:], e.choices, e.gold) for e in ex + [item]]
    assert fewshot_prompt(mm[2], mm[:2]) == head + "A?\nA. x\nB. y\nAnswer: B\n\nB?\nA. x\nB. y\nAnswer: A\n\nC?\nA. x\nB. y\nAnswer:"
    assert template_name("t-v1", "generate", 3, True) == "t-v1+gen-v1+3shot-v1+chat-v1"


def test_chat_template_wraps_the_prompt(tiny_tokenizer):
    item = pool_items(1)[0]
    (chat,) = build([item], "loglik", tokenizer=tiny_tokenizer, chat=True)
    assert chat.prompt != item.prompt and item.prompt in chat.prompt
    assert chat.prompt == tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": item.prompt}], tokenize=False, add_generation_prompt=True)


def test_stage_kshot_chat_records_everything(tmp_path):
    test = write_jsonl(tmp_path / "test_part.jsonl", mq_rows(4))
    train = write_jsonl(tmp_path / "train_part.jsonl", mq_rows(6, start=10))
    cfg = {"model": "tiny-llama", "bootstrap": 20, "shots": 2, "seed": 5, "chat_template": True,
           "out": str(tmp_path / "e"),
           "benchmarks": [{"name": "mq", "format": "medqa", "path": str(test), "fewshot_path": str(train)}]}
    out = run(build_config(EvaluateConfig, cfg))
    r = json.loads((out / "results.json").read_text())["mq"]
    assert (r["mode"], r["shots"], r["seed"], r["chat_template"]) == ("loglik", 2, 5, True)
    assert r["prompt_template"] == "medqa-letters-lmeval-v1+2shot-v1+chat-v1"
    assert r["fewshot_path"] == str(train) and r["model_path"].endswith("tiny-llama-v1")
    assert r["model_manifest"]["architecture"] == "LlamaForCausalLM" and r["model_manifest"]["parameters"] > 0
    items = build(load_benchmark("medqa", test).items, "loglik", 2, load_benchmark("medqa", train).items, 5)
    for k, it in enumerate(items):
        shown = [int(x) for x in __import__("re").findall(r"Which organ (\d+)\?", it.prompt)]
        assert len(shown) == 3 and shown[-1] == k and all(10 <= x < 16 for x in shown[:2])
    recs = [json.loads(x) for x in (out / "predictions" / "mq.jsonl").read_text().splitlines()]
    plain = build(load_benchmark("medqa", test).items, "loglik", 2, load_benchmark("medqa", train).items, 5)
    assert [x["prompt_sha256"] for x in recs] != [it.prompt_sha256 for it in plain]  # chat changed them


def test_fewshot_file_must_not_be_the_evaluated_file(tmp_path):
    test = write_jsonl(tmp_path / "test_part.jsonl", mq_rows(3))
    copy = write_jsonl(tmp_path / "copy.jsonl", mq_rows(3))
    for few in (test, copy):
        cfg = build_config(EvaluateConfig, {"model": "tiny-llama", "shots": 1, "out": str(tmp_path / "o"),
                                            "benchmarks": [{"name": "mq", "format": "medqa", "path": str(test),
                                                            "fewshot_path": str(few)}]})
        with pytest.raises(UserError, match="evaluated benchmark file itself") as e:
            run(cfg)
        assert e.value.path == str(few)


def test_split_size_warnings(tmp_path):
    b = medqa.load(write_jsonl(tmp_path / "test.jsonl", mq_rows(3)))
    assert any("1,273" in w and "has 3" in w for w in b.warnings)
    assert not medqa.load(write_jsonl(tmp_path / "sample.jsonl", mq_rows(3))).warnings
    b = medqa.load(write_jsonl(tmp_path / "phrases_no_exclude_dev.jsonl", mq_rows(2)))
    assert any("1,272" in w for w in b.warnings)
    pqa = {str(i): {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "yes"} for i in range(4)}
    (tmp_path / "ori_pqal.json").write_text(json.dumps(pqa))
    (tmp_path / "test_ground_truth.json").write_text(json.dumps({"1": "yes", "2": "yes"}))
    b = pubmedqa.load(tmp_path / "ori_pqal.json", ids=tmp_path / "test_ground_truth.json")
    assert any("1,000" in w and "has 4" in w for w in b.warnings)
    assert any("test_ground_truth.json has 500" in w and "has 2" in w for w in b.warnings)


def test_duplicate_id_and_gold_outside_choices_name_file_and_line(tmp_path):
    rows = mq_rows(3)
    rows[2]["id"] = rows[0]["id"] = "q-7"
    with pytest.raises(UserError, match="duplicate id 'q-7'") as e:
        medqa.load(write_jsonl(tmp_path / "dup.jsonl", rows))
    assert e.value.path.endswith("dup.jsonl") and e.value.line == 3
    rows = mq_rows(3)
    rows[1]["answer_idx"] = "E"
    with pytest.raises(UserError, match="answer_idx 'E' is not one of the options") as e:
        medqa.load(write_jsonl(tmp_path / "gold.jsonl", rows))
    assert e.value.path.endswith("gold.jsonl") and e.value.line == 2


def test_long_prompts_are_cut_from_the_left_and_counted(tmp_path, capsys):
    rows = mq_rows(3)
    rows[0]["question"] = "Which organ is described here? " + "Long history of symptoms. " * 60
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    for mode, extra in (("loglik", {}), ("generate", {"max_new_tokens": 2})):
        out = run(build_config(EvaluateConfig, {
            "model": "tiny-llama", "bootstrap": 0, "max_length": 64, "mode": mode, **extra,
            "out": str(tmp_path / mode), "benchmarks": [{"name": "mq", "format": "medqa", "path": str(path)}]}))
        r = json.loads((out / "results.json").read_text())["mq"]
        recs = [json.loads(x) for x in (out / "predictions" / "mq.jsonl").read_text().splitlines()]
        assert r["truncated"] == 1 and [x["truncated"] for x in recs] == [True, False, False]
        assert "1 of 3 prompts were longer than max_length=64" in capsys.readouterr().out
