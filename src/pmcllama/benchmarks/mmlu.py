"""MMLU (Hendrycks et al.), from the official headerless CSVs (`data/test/anatomy_test.csv`).

Each row: `question,A,B,C,D,answer` (RFC 4180 quoting; answer one of A-D). `path` is one
CSV or a folder of them (every `*.csv` in it, sorted by name: e.g. the six medical subsets
anatomy, clinical_knowledge, college_biology, college_medicine, medical_genetics,
professional_medicine copied into one folder). The subject of a file is the longest of
MMLU's 57 subject names found in its name (`anatomy_test.csv` -> anatomy,
`mmlu_anatomy_test_sample.csv` -> anatomy), else the name without `_test`/`_dev`/`_val`
(with a warning); `subject=` overrides it for a single file. Item ids are
`{subject}-{n}`, n the 1-based row number. A row with other than 6 columns, or an answer
outside A-D, is an error naming the file and line; a header row is skipped with a warning.
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

import csv
import io
import re
from pathlib import Path

from pmcllama.benchmarks.base import Item, Loaded, apply_limit
from pmcllama.inputs import read_text
from pmcllama.benchmarks.mcq import SubjectItem, letters_prompt
from pmcllama.errors import UserError

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
        subj, warning = (subject, None) if subject else subject_of(f)
        warnings += [warning] if warning else []
        file_items, file_warnings = _load_file(f, subj)
        items += file_items
        warnings += file_warnings
    return Loaded(apply_limit(items, limit, path), TEMPLATE, list(LABELS), warnings)


def _load_file(path: Path, subject: str) -> tuple[list[Item], list[str]]:
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    items: list[Item] = []
    warnings: list[str] = []
    end = 0
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise UserError(f"not a valid CSV row: {e}", path, start) from None
        end = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != 6:
            raise UserError(f"{len(row)} columns; MMLU rows are question,A,B,C,D,answer (6)", path, start)
        answer = row[5].strip()
        if not items and answer.lower() == "answer":
            warnings.append(f"{path}: skipped a header row (official MMLU CSVs have none)")
            continue
        if answer not in LABELS:
            raise UserError(f"answer {row[5]!r} is not one of A, B, C, D", path, start)
        n = len(items) + 1
        items.append(SubjectItem(f"{subject}-{n}", build_prompt(subject, row[0], row[1:5]),
                                 [" " + x for x in LABELS], LABELS.index(answer), subject))
    if not items:
        raise UserError("benchmark has no items", path)
    official = TEST_SIZES.get(subject)
    if official and path.stem.lower() == f"{subject}_test" and len(items) != official:
        warnings.append(f"{path}: MMLU {subject} test split has {official} questions; this file has {len(items)}")
    return items, warnings
