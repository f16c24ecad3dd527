"""Scoring by generation: answer extraction, voting, left-padded batches, generate/cot stages."""
from __future__ import annotations

import json

import pytest

from pmcllama.benchmarks.base import Item
from pmcllama.benchmarks.extract import cut, extract, vote
from pmcllama.benchmarks.generation import evaluate_generated, hf_generate_fn, option_texts
from pmcllama.benchmarks.prompting import cot_prompt
from pmcllama.benchmarks.stats import record_calibration, summarize
from pmcllama.config import build_config
from pmcllama.errors import ConfigError
from pmcllama.evaluate import EvaluateConfig, run

L4 = ["A", "B", "C", "D"]
OPTS = ["Aspirin", "Metformin", "Gamma knife surgery", "Deltoid muscle"]
YNM = ["yes", "no", "maybe"]

LETTER_CASES = [
    ("###Answer: OPTION B IS CORRECT.", 1),
    # the paper's trained layout, as a full fine-tune writes it: the answer after a blank line
    ("###Rationale: Saltatory conduction is seen in myelinated fibres.\n\n###Answer: OPTION C IS CORRECT.", 2),
    ("###Rationale: Ans. is 'd' i.e., Megaloblastic anemia\n \n### answer: option D is correct", 3),
    ("OPTION C IS CORRECT", 2),
    ("option (D) is the correct one", None),  # "is the correct" matches, "one" is fine: see below
    (" B", 1), ("B", 1), (" B.", 1), (" (C)", 2), ("C) Gamma knife surgery", 2), (" D: Deltoid", 3),
    (" A\nQuestion: next one\nAnswer: C", 0),  # the model runs on into a new item
    (" B\n\nWhich nerve is cut?\nA. x\nB. y\nAnswer: A", 1),  # k-shot MMLU: no marker, a blank line
    ("\n\nC. Gamma knife surgery", 2),
    ("The answer is D.", 3), ("the correct answer is (A) because", 0),
    ("Answer: C", 2), ("**Answer:** (A)", 0), ("Final answer: B", 1), ("answer = D", 3),
    ("I think the correct answer would be option C since", 2), ("The answer is: 'B'", 1),
    (" Metformin", 1), (" metformin is first line", 1), (" B Metformin", 1),
    (" A 45-year-old man presents with", None),  # an article, not a letter
    ("the answer is a drug that", None), ("I do not know.", None), ("", None),
    ("**B**", 1), ("> C.", 2), ("  \n\nD\n", 3),
]


@pytest.mark.parametrize("text,want", LETTER_CASES)
def test_extract_letters(text, want):
    if text.startswith("option (D)"):
        want = 3
    assert extract(text, L4, OPTS) == want


@pytest.mark.parametrize("text,want", [
    (" yes", 0), (" Yes, because the trial showed", 0), (" No.", 1), (" maybe", 2), ("MAYBE", 2),
    ("The answer is no.", 1), ("Answer: Yes", 0), ("answer: maybe, since", 2),
    (" It is unclear whether", None), (" yesterday", None), (" Not really", None),
    (" no\nAbstract: another abstract\nAnswer: yes", 1),
    ("###Rationale: Telephone counseling raised adherence.\n\n###Answer: yes", 0),
])
def test_extract_yes_no_maybe(text, want):
    assert extract(text, YNM) == want


def test_extract_cot_takes_the_last_statement():
    text = ("At first sight the answer is A. But for a child the answer is not B, and "
            "considering dosing, the answer is C.")
    assert extract(text, L4, last=True) == 2
    assert extract(text, L4, last=False) == 0
    assert extract("the answer is not B", L4) is None
    assert cut("abc\nQuestion: x") == "abc"


def test_vote():
    assert vote([1, 2, 2, None, 1]) == (1, {1: 2, 2: 2})  # tie -> the answer reached first
    assert vote([None, 3, 3, 0]) == (3, {3: 2, 0: 1})
    assert vote([None, None]) == (None, {})


def letter_item(i: int, gold: int) -> Item:
    listed = "".join(f"{k}. {v}\n" for k, v in zip(L4, OPTS))
    return Item(f"q{i}", f"Question: Which {i}?\n{listed}Answer:", [" " + x for x in L4], gold)


def test_scripted_generation_votes_and_counts_unparsable():
    items = [letter_item(0, 1), letter_item(1, 2), letter_item(2, 0)]
    script = {"Which 0": [" B", "the answer is B", " C"],      # voted B: right
              "Which 1": [" A", "Answer: A", " C"],            # voted A: wrong
              "Which 2": ["no idea", "hmm", "?"]}              # nothing readable
    calls = []

    def fake(prompts, n):
        calls.append(len(prompts))
        return [script[next(k for k in script if k in p)][:n] for p in prompts]

    recs = evaluate_generated(items, fake, samples=3, batch_size=2, progress=False)
    assert calls == [2, 1]
    assert [r["pred"] for r in recs] == [1, 0, None]
    assert [r["correct"] for r in recs] == [True, False, False]
    assert recs[0]["votes"] == {"B": 2, "C": 1} and recs[0]["confidence"] == pytest.approx(2 / 3)
    assert recs[2]["sample_preds"] == [None, None, None] and not recs[2]["parsed"]
    s = summarize(recs, [4, 4, 4], L4, n_boot=0)
    assert s["acc"] == pytest.approx(1 / 3) and s["unparsable"] == 1 and s["acc_norm"] is None
    assert s["pred_share"] == {"A": pytest.approx(1 / 3), "B": pytest.approx(1 / 3), "C": 0, "D": 0}
    assert record_calibration(recs)["n_bins"] == 10
    assert option_texts(items[0]) == OPTS


def test_cot_prompt():
    p = cot_prompt(letter_item(0, 1))
    assert p.endswith('D. Deltoid muscle\nThink step by step, then finish with "The answer is X" where X '
                      'is one of A, B, C, D.\nReasoning:')


def test_left_padded_batch_matches_single_prompts(tiny_model):
    model, tok = tiny_model
    fn = hf_generate_fn(model, tok, max_new_tokens=5, max_length=1024)
    prompts = ["Heart", "The aorta carries blood from the left ventricle to", "Asthma is a disease of"]
    batched = fn(prompts, 1)
    alone = [fn([p], 1)[0] for p in prompts]
    assert batched == alone and all(len(t) == 1 and t[0] for t in batched)


def _bench(tmp_path):
    rows = [{"question": f"Which organ {i}?", "answer_idx": "ABCD"[i % 4],
             "options": {"A": "Liver", "B": "Heart", "C": "Lung", "D": "Skin"}} for i in range(4)]
    path = tmp_path / "medqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generate_and_cot_stages(tmp_path):
    path = _bench(tmp_path)
    base = {"model": "tiny-llama", "bootstrap": 50, "batch_size": 3,
            "benchmarks": [{"name": "mq", "format": "medqa", "path": str(path)}]}
    out = run(build_config(EvaluateConfig, {**base, "out": str(tmp_path / "g"), "mode": "generate",
                                            "max_new_tokens": 4}))
    r = json.loads((out / "results.json").read_text())["mq"]
    assert r["mode"] == "generate" and r["prompt_template"] == "medqa-letters-lmeval-v1+gen-v1"
    assert r["acc_norm"] is None and r["calibration"] is None and 0 <= r["unparsable"] <= 4
    assert r["generation"] == {"max_new_tokens": 4, "temperature": 0.0, "top_p": None, "samples": 1}
    recs = [json.loads(x) for x in (out / "predictions" / "mq.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(len(x["responses"]) == 1 for x in recs)
    assert r["unparsable"] == sum(x["pred"] is None for x in recs)
    cot = {**base, "mode": "cot", "max_new_tokens": 6, "temperature": 1.0, "self_consistency": 3, "seed": 7}
    a = run(build_config(EvaluateConfig, {**cot, "out": str(tmp_path / "c1")}))
    b = run(build_config(EvaluateConfig, {**cot, "out": str(tmp_path / "c2")}))
    ra = json.loads((a / "results.json").read_text())["mq"]
    assert ra["prompt_template"] == "medqa-letters-lmeval-v1+cot-v1" and ra["calibration"]["ece"] is not None
    recs_a = (a / "predictions" / "mq.jsonl").read_text()
    assert recs_a == (b / "predictions" / "mq.jsonl").read_text()  # same seed, same samples
    assert all(len(json.loads(x)["responses"]) == 3 for x in recs_a.splitlines())
    assert (a / "plots" / "mq_reliability.png").is_file()


@pytest.mark.parametrize("extra,msg", [
    ({"temperature": 0.5}, "apply to mode generate or cot"),
    ({"mode": "cot", "self_consistency": 3}, "needs temperature > 0"),
    ({"mode": "cot", "shots": 1}, "shots apply to mode loglik or generate"),
    ({"shots": 2}, "needs fewshot_path for benchmark 'mq'"),
])
def test_mode_config_errors(extra, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config(EvaluateConfig, {"model": "m", **extra,
                                      "benchmarks": [{"name": "mq", "format": "medqa", "path": "p"}]})


def test_paired_acc_norm_of_generated_runs_is_a_clear_error():
    from pmcllama.benchmarks.stats import paired_comparison
    from pmcllama.errors import UserError

    gen = [{"id": "a", "correct": True}, {"id": "b", "correct": False}]
    ll = [{"id": "a", "correct": True, "correct_norm": False}, {"id": "b", "correct": True, "correct_norm": True}]
    assert paired_comparison(gen, ll, "correct", n_boot=0)["only_second_correct"] == 1
    with pytest.raises(UserError, match="have acc only"):
        paired_comparison(ll, gen, "correct_norm", n_boot=0)


def test_report_lists_unparsable_answers(tmp_path):
    from pmcllama.report import Run, markdown

    entry = {"n": 4, "acc": 0.25, "acc_ci95": [0.0, 0.75], "unparsable": 2, "prompt_template": "t+gen-v1"}
    text = markdown([Run("gen", tmp_path, {"model": "m", "mq": entry})], ["mq"], {}, "acc")
    assert "Unparsable generated answers (counted wrong): gen mq: 2 of 4" in text
    loglik = {**entry, "unparsable": None}
    assert "Unparsable" not in markdown([Run("ll", tmp_path, {"model": "m", "mq": loglik})], ["mq"], {}, "acc")
