"""Instruction converters: benchmark QA (MedQA, MedMCQA, PubMedQA, MMLU), MTS-Dialog, ShareGPT,
OpenAI messages and consumer QA JSONL; answer formats; bad input; real files."""
from __future__ import annotations

import json

import pytest

from pmcllama.config import build_config
from pmcllama.errors import ConfigError, UserError
from pmcllama.instructions import DEFAULT_SYSTEM_PROMPT, InstructionsConfig, run

MEDQA = [
    {"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "Vitamin A", "B": "Vitamin B12",
     "C": "Vitamin C", "D": "Vitamin D"}, "answer": "Vitamin C", "answer_idx": "C", "meta_info": "step1"},
    {"question": "Most common cause of community-acquired pneumonia?", "options": {
        "A": "S. aureus", "B": "S. pneumoniae", "C": "Klebsiella", "D": "Legionella", "E": "Mycoplasma"},
     "answer_idx": "B"},
]
MEDMCQA = [
    {"id": "m1", "question": "Drug of choice for absence seizures:", "opa": "Phenytoin", "opb": "Ethosuximide",
     "opc": "Carbamazepine", "opd": "Phenobarbital", "cop": 2, "choice_type": "single",
     "exp": "Ethosuximide blocks T-type calcium channels.", "subject_name": "Pharmacology"},
    {"id": "m2", "question": "Largest organ of the body?", "opa": "Liver", "opb": "Brain", "opc": "Skin",
     "opd": "Lung", "cop": 3, "exp": None, "subject_name": None},
]
PUBMEDQA = {"123": {"QUESTION": "Does aspirin reduce stroke risk?", "CONTEXTS": ["Background one.", "Results two."],
                    "LABELS": ["BACKGROUND", "RESULTS"], "final_decision": "yes",
                    "LONG_ANSWER": "Aspirin reduced stroke risk."},
            "456": {"QUESTION": "Is coffee harmful?", "CONTEXTS": ["Mixed data."], "final_decision": "maybe"}}
MMLU = ('What is the largest bone?,Femur,"Tibia, the shin bone",Humerus,"A ""long"" bone",A\r\n'
        "Which organ makes insulin?,Liver,Pancreas,Kidney,Spleen,B\r\n")
MTS = ('ID,section_header,section_text,dialogue\n'
       '7,GENHX,"The patient is a 40-year-old man with cough.","Doctor: What brings you in?\nPatient: A cough, '
       'for a week."\n'
       '8,ALLERGY,No known drug allergies.,"Doctor: Any allergies?\nPatient: None."\n')


def make_cfg(tmp_path, sources, **kw):
    kw = {"val_fraction": 0, "system_prompt": None, **kw}
    return build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "sources": sources, **kw})


def write(path, data):
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in data), encoding="utf-8")
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def convert(tmp_path, fmt, name, data, **src):
    path = write(tmp_path / name, data)
    out = run(make_cfg(tmp_path, [{"name": fmt, "format": fmt, "paths": [path], **src}]), force=True)
    return read_jsonl(out / "train.jsonl")


def pairs(records):
    return [[(m["role"], m["content"]) for m in r["messages"]] for r in records]


MEDQA_USER = ("Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin B12\nC. Vitamin C\nD. Vitamin D")


@pytest.mark.parametrize("answer_format, answer", [
    ("paper", "###Answer: OPTION C IS CORRECT."),
    ("letter", "C. Vitamin C"),
    ("letter_rationale", "The answer is C. Vitamin C."),
])
def test_medqa_answer_formats(tmp_path, answer_format, answer):
    recs = convert(tmp_path, "medqa", "train.jsonl", MEDQA, answer_format=answer_format)
    assert recs[0] == {"id": "medqa-line-1", "source": "medqa", "task": "qa", "messages": [
        {"role": "user", "content": MEDQA_USER}, {"role": "assistant", "content": answer}]}
    assert recs[1]["messages"][0]["content"].endswith("\nE. Mycoplasma")


def test_medqa_default_is_paper_with_system_prompt(tmp_path):
    path = write(tmp_path / "train.jsonl", MEDQA)
    cfg = build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "val_fraction": 0,
                                            "sources": [{"name": "q", "format": "medqa", "paths": [path]}]})
    recs = read_jsonl(run(cfg) / "train.jsonl")
    assert recs[1]["messages"] == [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                   {"role": "user", "content": recs[1]["messages"][1]["content"]},
                                   {"role": "assistant", "content": "###Answer: OPTION B IS CORRECT."}]


@pytest.mark.parametrize("answer_format, first, second", [
    ("paper", "###Rationale: Ethosuximide blocks T-type calcium channels.\n\n###Answer: OPTION B IS CORRECT.",
     "###Answer: OPTION C IS CORRECT."),
    ("letter", "B. Ethosuximide", "C. Skin"),
    ("letter_rationale", "Ethosuximide blocks T-type calcium channels.\n\nThe answer is B. Ethosuximide.",
     "The answer is C. Skin."),
])
@pytest.mark.parametrize("name", ["dev.json", "dev.jsonl", "dev_lines.json"])
def test_medmcqa(tmp_path, answer_format, first, second, name):
    data = MEDMCQA if name != "dev_lines.json" else "".join(json.dumps(r) + "\n" for r in MEDMCQA)
    recs = convert(tmp_path, "medmcqa", name, data, answer_format=answer_format)
    assert [r["id"] for r in recs] == ["medmcqa-m1", "medmcqa-m2"]
    assert pairs(recs) == [
        [("user", "Drug of choice for absence seizures:\nA. Phenytoin\nB. Ethosuximide\nC. Carbamazepine\n"
                  "D. Phenobarbital"), ("assistant", first)],
        [("user", "Largest organ of the body?\nA. Liver\nB. Brain\nC. Skin\nD. Lung"), ("assistant", second)]]


@pytest.mark.parametrize("answer_format, first, second", [
    ("paper", "###Rationale: Aspirin reduced stroke risk.\n\n###Answer: yes", "###Answer: maybe"),
    ("letter", "yes", "maybe"),
    ("letter_rationale", "Aspirin reduced stroke risk.\n\nThe answer is yes.", "The answer is maybe."),
])
def test_pubmedqa(tmp_path, answer_format, first, second):
    recs = convert(tmp_path, "pubmedqa", "ori_pqal.json", PUBMEDQA, answer_format=answer_format)
    assert [r["id"] for r in recs] == ["pubmedqa-123", "pubmedqa-456"]
    assert pairs(recs) == [
        [("user", "Background one. Results two.\n\nQuestion: Does aspirin reduce stroke risk?\n"
                  "Answer yes, no or maybe."), ("assistant", first)],
        [("user", "Mixed data.\n\nQuestion: Is coffee harmful?\nAnswer yes, no or maybe."), ("assistant", second)]]


@pytest.mark.parametrize("answer_format, answer", [
    ("paper", "###Answer: OPTION A IS CORRECT."), ("letter", "A. Femur"),
    ("letter_rationale", "The answer is A. Femur.")])
def test_mmlu(tmp_path, answer_format, answer):
    recs = convert(tmp_path, "mmlu", "anatomy_test.csv", MMLU, answer_format=answer_format)
    assert [r["id"] for r in recs] == ["mmlu-line-1", "mmlu-line-2"]
    assert pairs(recs)[0] == [("user", 'What is the largest bone?\nA. Femur\nB. Tibia, the shin bone\nC. Humerus\n'
                                       'D. A "long" bone'), ("assistant", answer)]
    assert recs[1]["messages"][1]["content"] in (
        "###Answer: OPTION B IS CORRECT.", "B. Pancreas", "The answer is B. Pancreas.")


def test_letter_rationale_does_not_double_the_period(tmp_path):
    recs = convert(tmp_path, "mmlu", "m.csv", "Q?,ends here.,b,c,d,A\n", answer_format="letter_rationale")
    assert recs[0]["messages"][1]["content"] == "The answer is A. ends here."


def test_several_files_name_ids_by_file(tmp_path):
    a = write(tmp_path / "anatomy_test.csv", MMLU)
    b = write(tmp_path / "virology_test.csv", "Q?,a,b,c,d,A\nR?,a,b,c,d,B\n")
    out = run(make_cfg(tmp_path, [{"name": "mmlu", "format": "mmlu", "paths": [a, b], "max_records": 3}]))
    assert [r["id"] for r in read_jsonl(out / "train.jsonl")] == [
        "mmlu-anatomy_test-line-1", "mmlu-anatomy_test-line-2", "mmlu-virology_test-line-1"]


def test_mtsdialog(tmp_path):
    recs = convert(tmp_path, "mtsdialog", "mts.csv", MTS)
    assert [(r["id"], r["task"]) for r in recs] == [("mtsdialog-7", "dialogue"), ("mtsdialog-8", "dialogue")]
    assert pairs(recs)[0] == [
        ("user", "Doctor: What brings you in?\nPatient: A cough, for a week.\n\nWrite the history of present "
                 "illness section of the clinical note for this doctor-patient conversation."),
        ("assistant", "The patient is a 40-year-old man with cough.")]
    assert "Write the allergies section" in recs[1]["messages"][0]["content"]


SHAREGPT = [{"id": "c1", "conversations": [
    {"from": "system", "value": "You are a triage nurse."}, {"from": "human", "value": "I have a fever."},
    {"from": "gpt", "value": "How high is it?"}, {"from": "human", "value": "39 C."},
    {"from": "gpt", "value": "Take paracetamol and see a doctor."}]},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello, how can I help?"}]}]


@pytest.mark.parametrize("name", ["chats.json", "chats.jsonl"])
def test_sharegpt_keeps_turns_and_own_system(tmp_path, name):
    path = write(tmp_path / name, SHAREGPT)
    out = run(make_cfg(tmp_path, [{"name": "sg", "format": "sharegpt", "paths": [path]}],
                       system_prompt="Default system."))
    recs = read_jsonl(out / "train.jsonl")
    assert recs[0]["id"] == "sg-c1" and recs[0]["task"] == "dialogue"
    assert pairs(recs) == [
        [("system", "You are a triage nurse."), ("user", "I have a fever."), ("assistant", "How high is it?"),
         ("user", "39 C."), ("assistant", "Take paracetamol and see a doctor.")],
        [("system", "Default system."), ("user", "Hi"), ("assistant", "Hello, how can I help?")]]


def test_openai_messages(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Dose of amoxicillin?"},
                          {"role": "assistant", "content": [{"type": "text", "text": "500 mg "},
                                                            {"type": "text", "text": "three times daily."}]},
                          {"role": "user", "content": "For how long?"},
                          {"role": "assistant", "content": "Usually 5 to 7 days."}]}]
    recs = convert(tmp_path, "messages", "chat.jsonl", rows)
    assert recs[0]["id"] == "messages-line-1"
    assert pairs(recs) == [[("user", "Dose of amoxicillin?"), ("assistant", "500 mg three times daily."),
                            ("user", "For how long?"), ("assistant", "Usually 5 to 7 days.")]]


def test_qa_jsonl_default_and_custom_fields(tmp_path):
    medquad = [json.dumps({"qid": "0001", "question": "What is gout?", "answer": "A form\u2028of arthritis."},
                          ensure_ascii=False)]
    medication = [{"Question": "Can I take ibuprofen with lisinopril?", "Focus (Drug)": "ibuprofen",
                   "Answer": "It may reduce the effect of lisinopril."}]
    assert pairs(convert(tmp_path, "qa_jsonl", "medquad.jsonl", medquad)) == [
        [("user", "What is gout?"), ("assistant", "A form\u2028of arthritis.")]]
    recs = convert(tmp_path, "qa_jsonl", "medicationqa.jsonl", medication)
    assert recs[0]["id"] == "qa_jsonl-line-1" and recs[0]["task"] == "qa"
    assert pairs(recs)[0][1] == ("assistant", "It may reduce the effect of lisinopril.")
    custom = [{"q": "Why?", "a": "Because."}]
    assert pairs(convert(tmp_path, "qa_jsonl", "c.jsonl", custom, question_field="q", answer_field="a")) == [
        [("user", "Why?"), ("assistant", "Because.")]]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt, name, data, line, reason", [
    ("medqa", "q.jsonl", [MEDQA[0], {**MEDQA[0], "answer_idx": "F"}], 2, "answer_idx 'F' is not one of the options"),
    ("medqa", "q.jsonl", [{**MEDQA[0], "question": "  "}], 1, "empty 'question'"),
    ("medqa", "q.jsonl", [{"question": "Q?", "answer_idx": "A"}], 1, "'options' must be an object"),
    ("medmcqa", "m.jsonl", [MEDMCQA[0], {**MEDMCQA[1], "cop": 5}], 2, "cop 5 is not an option number 1-4"),
    ("medmcqa", "m.jsonl", [{k: v for k, v in MEDMCQA[0].items() if k != "opc"}], 1, "missing 'opc'"),
    ("medmcqa", "m.jsonl", [{**MEDMCQA[0], "cop": 0}], 1, "cop 0 .* Hugging Face copy counts 0-3"),
    ("pubmedqa", "p.json", {"9": {"QUESTION": "Q?", "CONTEXTS": []}}, 1, "pmid 9: final_decision None"),
    ("mmlu", "m.csv", "Q1?,a,b,c,d,A\nQ2?,a,b,c,d,E\n", 2, "answer 'E' is not one of A, B, C, D"),
    ("mmlu", "m.csv", "Q1?,a,b,c,A\n", 1, "5 columns, expected 6"),
    ("mtsdialog", "d.csv", "ID,section_header,section_text,dialogue\n1,CC,,\"Doctor: Hi\"\n", 2,
     "empty 'section_text'"),
    ("sharegpt", "s.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}]}], 1,
     "the last turn is not an assistant answer"),
    ("messages", "m.jsonl", [{"messages": [{"role": "assistant", "content": "Hi"}]}], 1,
     "turn 0 is assistant, expected user"),
    ("qa_jsonl", "c.jsonl", [{"question": "Why?"}], 1, "missing 'answer'"),
])
def test_bad_record_stops_with_file_and_line(tmp_path, fmt, name, data, line, reason):
    path = write(tmp_path / name, data)
    with pytest.raises(UserError, match=reason) as err:
        run(make_cfg(tmp_path, [{"name": "x", "format": fmt, "paths": [path]}]))
    assert err.value.path == path and err.value.line == line
    assert f"{name}:{line}:" in str(err.value)


def test_skip_policy_writes_rejected(tmp_path):
    medqa = write(tmp_path / "q.jsonl", [MEDQA[0], "{oops", {**MEDQA[1], "answer_idx": "Z"}])
    mmlu = write(tmp_path / "m.csv", MMLU + ",a,b,c,d,A\n")
    out = run(make_cfg(tmp_path, [{"name": "q", "format": "medqa", "paths": [medqa]},
                                  {"name": "m", "format": "mmlu", "paths": [mmlu]}], on_error="skip"))
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["source"], r["line"], r["reason"][:14]) for r in rejected] == [
        ("q", 2, "not valid JSON"), ("q", 3, "answer_idx 'Z'"), ("m", 3, "empty question")]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["rejected"] == 3 and stats["sources"]["m"]["records"] == 2


def test_wrong_file_for_format(tmp_path):
    p = write(tmp_path / "p.json", PUBMEDQA)
    with pytest.raises(UserError, match="use format: pubmedqa"):
        run(make_cfg(tmp_path, [{"name": "x", "format": "medqa", "paths": [p]}]))
    m = write(tmp_path / "m.csv", "a,b\n1,2\n")
    with pytest.raises(UserError, match="not an MTS-Dialog CSV: header lacks section_header"):
        run(make_cfg(tmp_path, [{"name": "x", "format": "mtsdialog", "paths": [m]}]))
    one = write(tmp_path / "one.jsonl", json.dumps(MEDQA[0], indent=1))
    with pytest.raises(UserError, match="one JSON object over several lines"):
        run(make_cfg(tmp_path, [{"name": "x", "format": "medqa", "paths": [one]}]))
    q = write(tmp_path / "q.jsonl", MEDQA)
    with pytest.raises(UserError, match="not PubMedQA's ori_pqal.json layout"):
        run(make_cfg(tmp_path, [{"name": "x", "format": "pubmedqa", "paths": [q]}]))


def test_format_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="answer_format only apply to format: medqa"):
        make_cfg(tmp_path, [{"name": "x", "format": "alpaca", "paths": ["a.json"], "answer_format": "letter"}])
    with pytest.raises(ConfigError, match="question_field only apply to format: qa_jsonl"):
        make_cfg(tmp_path, [{"name": "x", "format": "medqa", "paths": ["a.jsonl"], "question_field": "q"}])
    with pytest.raises(ConfigError, match="mtsdialog source 'x' needs paths"):
        make_cfg(tmp_path, [{"name": "x", "format": "mtsdialog"}])
    with pytest.raises(ConfigError, match="answer_format"):
        make_cfg(tmp_path, [{"name": "x", "format": "medqa", "paths": ["a"], "answer_format": "bold"}])


# ----------------------------------------------------------------------------- real files


@pytest.mark.shared
def test_real_files(shared_data, tmp_path):
    ins, bench = shared_data / "instruct", shared_data / "benchmarks"
    samples = bench / "format_samples"
    sources = [
        {"name": "mts", "format": "mtsdialog", "paths": [str(ins / "mts_dialog_train.csv")]},
        {"name": "medquad", "format": "qa_jsonl", "paths": [str(ins / "medquad_qa.jsonl")], "max_records": 300},
        {"name": "medicationqa", "format": "qa_jsonl", "paths": [str(ins / "medicationqa.jsonl")]},
        {"name": "pubmedqa", "format": "pubmedqa", "paths": [str(bench / "pubmedqa" / "ori_pqal_trainval.json")]},
        {"name": "medqa", "format": "medqa", "paths": [str(samples / "medqa_us_4options_sample.jsonl")]},
        {"name": "medmcqa", "format": "medmcqa", "paths": [str(samples / "medmcqa_dev_sample.jsonl")],
         "answer_format": "letter"},
        {"name": "mmlu", "format": "mmlu", "paths": [str(samples / "mmlu_anatomy_test_sample.csv")],
         "answer_format": "letter_rationale"},
    ]
    out = run(make_cfg(tmp_path, sources, on_error="skip"))
    stats = json.loads((out / "stats.json").read_text())["sources"]
    got = {name: s["records"] for name, s in stats.items()}
    assert got == {"mts": 1201, "medquad": 300, "medicationqa": got["medicationqa"], "pubmedqa": 500,
                   "medqa": 10, "medmcqa": 10, "mmlu": 10}
    assert got["medicationqa"] + stats["medicationqa"]["rejected"] == 690
    recs = {r["source"]: r for r in read_jsonl(out / "train.jsonl")}
    assert recs["medqa"]["messages"][-1]["content"].startswith("###Answer: OPTION ")
    assert recs["pubmedqa"]["messages"][-1]["content"].startswith("###Rationale: ")
    assert recs["mmlu"]["messages"][-1]["content"].startswith("The answer is ")
    assert "section of the clinical note" in recs["mts"]["messages"][-2]["content"]
