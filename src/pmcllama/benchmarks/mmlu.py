"""MMLU (Hendrycks et al.), from the official headerless CSVs (`data/test/anatomy_test.csv`).

Each row: `question,A,B,C,D,answer` (RFC 4180 quoting; answer one of A-D). `path` is one
CSV or a folder of them (every `*.csv` in it, sorted by name: e.g. the six medical subsets
anatomy, clinical_knowledge, college_biology, college_medicine, medical_genetics,
professional_medicine copied into one folder). The subject of a file is the longest of
MMLU's 57 subject names found in its name (`anatomy_test.csv` -> anatomy,
`mmlu_anatomy_test_sample.csv` -> anatomy), else the name without `_test`/`_dev`/`_val`
(with a warning); `subject=` overrides it for a single file. Item ids are
`{subject}-{n}`, n the 1-based row number. A row with other than 6 columns, an empty question
or an answer outside A-D is an error naming the file and line; a header row is skipped with a warning.
An official `{subject}_test.csv` whose row count differs from the official test split's
gets a warning with both numbers.

Prompt, template `mmlu-lmeval-v1`, exactly lm-evaluation-harness's `mmlu_{subject}` tasks
zero-shot (lm_eval/tasks/mmlu/default/_default_template_yaml and mmlu_{subject}.yaml: the
task `description` followed by `doc_to_text`)::

    "The following are multiple choice questions (with answers) about {subject with
    spaces}.\\n\\n" + question.strip() + "\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"

scored continuations " A", " B", " C", " D"; gold = the `answer` letter. Only the question
is stripped (`question.strip()` in the template); the options are used as they are.
"""
from __future__ import annotations

import re
from pathlib import Path

from pmcllama.benchmarks.base import Doc, Docs, Item, Loaded, Task, apply_limit, letters_block, letters_prompt
from pmcllama.errors import UserError
from pmcllama.inputs import csv_rows

TEMPLATE = "mmlu-lmeval-v1"
LABELS = ["A", "B", "C", "D"]
SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine "
    "college_physics computer_security conceptual_physics econometrics electrical_engineering "
    "elementary_mathematics formal_logic global_facts high_school_biology high_school_chemistry "
    "high_school_computer_science high_school_european_history high_school_geography "
    "high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology high_school_statistics "
    "high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing "
    "medical_genetics miscellaneous moral_disputes moral_scenarios nutrition philosophy "
    "prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy "
    "virology world_religions"
).split()
# official test-split sizes of the medical subsets (the paper's MMLU-medical)
TEST_SIZES = {"anatomy": 135, "clinical_knowledge": 265, "college_biology": 144,
              "college_medicine": 173, "medical_genetics": 100, "professional_medicine": 272}


def header(subject: str) -> str:
    """lm-eval's mmlu task description for `subject` (underscores read as spaces)."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def build_prompt(subject: str, question: str, options: list[str]) -> str:
    return letters_prompt(question.strip(), options, header(subject))


def docs(path: str | Path, strict: bool = True, subject: str | None = None) -> Docs:
    """The documents of one MMLU CSV; `subject`: the subject named in the prompt (default:
    from the file name). A header row is skipped with a warning (`strict`), or is a document
    with an error (lenient: the converters set it aside, counted)."""
    path = Path(path)
    subject, warning = (subject, None) if subject else subject_of(path)
    out = Docs(path, strict)
    out.warnings += [warning] if warning else []
    for line, fields, error in csv_rows(path):
        if error is None and not out and len(fields) == 6 and fields[5].strip().lower() == "answer":
            if strict:  # evaluation skips it with a warning; a lenient reader sets it aside
                out.warnings.append(f"{path}: skipped a header row (official MMLU CSVs have none)")
                continue
            error = "a header row (official MMLU CSVs have none)"
        doc = Doc(f"line-{line}", line, None, fields, subject=subject, error=error or _problem(fields))
        if doc.error is None:
            doc.question, doc.options, doc.answer = fields[0], dict(zip(LABELS, fields[1:5])), fields[5].strip()
        out.add(doc)
    return out


def _problem(fields: list[str]) -> str | None:
    if len(fields) != 6:
        return f"{len(fields)} columns, expected 6 (question,A,B,C,D,answer)"
    if not fields[0].strip():
        return "empty question"
    if fields[5].strip() not in LABELS:
        return f"answer {fields[5].strip()!r} is not one of A, B, C, D"
    return None


TASK = Task.labelled("mmlu", lambda doc: letters_block(doc.question.strip(), list(doc.options.values()), ""),
                    LABELS, description=lambda doc: header(doc.subject or ""))
doc_to_text, doc_to_choice, doc_to_target = TASK.doc_to_text, TASK.doc_to_choice, TASK.doc_to_target


def subject_of(path: Path) -> tuple[str, str | None]:
    """(subject, warning) from a file name such as anatomy_test.csv."""
    stem = path.stem.lower()
    found = [s for s in SUBJECTS if re.search(rf"(^|_){s}(_|$)", stem)]
    if found:
        return max(found, key=len), None
    guess = re.sub(r"_(test|dev|val)$", "", stem)
    return guess, (f"{path}: '{guess}' is not one of MMLU's 57 subjects; the prompt says "
                   f"'about {guess.replace('_', ' ')}' (set subject= to change it)")


def files_of(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        found = sorted(q for q in p.glob("*.csv") if q.is_file())
        if not found:
            raise UserError("no *.csv file in this folder", p)
        return found
    return [p]


def load(path: str | Path, limit: int | None = None, subject: str | None = None) -> Loaded:
    """Read one MMLU CSV, or every CSV of a folder, into items."""
    files = files_of(path)
    if subject is not None and len(files) > 1:
        raise UserError("subject= applies to a single CSV file, not a folder", path)
    items: list[Item] = []
    warnings: list[str] = []
    for f in files:
        found = docs(f, subject=subject)
        if not found:
            raise UserError("benchmark has no items", f)
        subj = found[0].subject
        items += [TASK.item(doc, f"{subj}-{n}") for n, doc in enumerate(found, 1)]
        warnings += found.warnings
        official = TEST_SIZES.get(subj)
        if official and f.stem.lower() == f"{subj}_test" and len(found) != official:
            warnings.append(f"{f}: MMLU {subj} test split has {official} questions; this file has {len(found)}")
    return Loaded(apply_limit(items, limit, path), TEMPLATE, list(LABELS), warnings)
