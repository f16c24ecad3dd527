"""PubMedQA (PQA-L, the 1,000 expert-labelled questions), from the official `ori_pqal.json`.

Input layout (github.com/pubmedqa/pubmedqa, `data/ori_pqal.json`, also the split files
`pqal_fold*/{train,dev}_set.json` and `test_set.json`): one JSON object
`{pmid: {"QUESTION": str, "CONTEXTS": [str, ...], "final_decision": "yes"|"no"|"maybe", ...}}`.

Prompt, template `pubmedqa-lmeval-v1`, as lm-evaluation-harness's `pubmedqa` task
(lm_eval/tasks/pubmedqa/preprocess_pubmedqa.py, `doc_to_text`)::

    "Abstract: " + "\\n".join(CONTEXTS) + "\\nQuestion: " + QUESTION + "\\nAnswer:"

The abstract's sections are joined with a newline, as lm-eval does. Choices are
`doc_to_choice: ["yes", "no", "maybe"]` with lm-eval's default target delimiter " ", so the
scored continuations are " yes", " no", " maybe"; gold is the index of `final_decision`.
lm-eval reads the Hugging Face copy `bigbio/pubmed_qa` (`pubmed_qa_labeled_fold0_source`),
whose `test` split is the official 500-question test set: pass the official
`test_ground_truth.json` as `ids` to restrict `ori_pqal.json` to exactly those questions.

Split sizes are checked against the official release (a warning with both numbers, since a
partial copy gives numbers that cannot be compared with the paper's): `ori_pqal.json`
1,000 questions, `test_set.json` and the `ids` file `test_ground_truth.json` 500,
`pqal_fold*/train_set.json` 450, `dev_set.json` 50.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pmcllama.benchmarks.base import (
    Doc, Docs, Item, Loaded, Task, apply_limit, line_of, looks_like_jsonl, parse_json_document,
)
from pmcllama.inputs import need_str, read_text, whole_json
from pmcllama.errors import UserError

TEMPLATE = "pubmedqa-lmeval-v1"
LABELS = ["yes", "no", "maybe"]
OFFICIAL_SIZES = {"ori_pqal": 1000, "test_set": 500, "test_ground_truth": 500, "train_set": 450, "dev_set": 50}
WRONG_JSONL = ("this is JSON Lines (one record per line), not PubMedQA's ori_pqal.json layout "
               "({pmid: {QUESTION, CONTEXTS, final_decision}}); for MedQA JSONL use format: medqa")


def build_prompt(question: str, contexts: list[str]) -> str:
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(contexts), question)


def docs(path: str | Path, strict: bool = True) -> Docs:
    """The documents of an ori_pqal.json-layout file, one per pmid (its line: the pmid's)."""
    text = read_text(path)
    try:
        data, dups = parse_json_document(path, text)
    except UserError:
        if looks_like_jsonl(text) and whole_json(text) is None:
            raise UserError(WRONG_JSONL, path) from None
        raise
    _check_top(path, data)
    if dups:
        raise UserError(f"duplicate pmid '{dups[0]}'", path, line_of(text, f'"{dups[0]}"', 2))
    out = Docs(path, strict)
    for pmid, rec in data.items():
        line = line_of(text, f'"{pmid}"')
        try:
            out.add(_doc(str(pmid), rec, line))
        except ValueError as e:
            out.add(Doc(str(pmid), line, record=rec, error=f"pmid {pmid}: {e}"))
    return out


def _doc(pmid: str, rec: Any, line: int | None) -> Doc:
    if not isinstance(rec, dict):
        raise ValueError(f"record is a {type(rec).__name__}, expected an object")
    question = need_str(rec, "QUESTION", "missing field '{}'")
    if "CONTEXTS" not in rec:
        raise ValueError("missing field 'CONTEXTS'")
    contexts = rec["CONTEXTS"]
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise ValueError("CONTEXTS must be a list of strings")
    label = rec.get("final_decision")
    if label not in LABELS:
        raise ValueError(f"final_decision {label!r} is not one of yes, no, maybe")
    long = rec.get("LONG_ANSWER")
    return Doc(pmid, line, None, rec, question, {}, label, list(contexts), long if isinstance(long, str) else "")


def question(doc: Doc) -> str:
    return build_prompt(doc.question, doc.contexts).removesuffix("Answer:")


TASK = Task.labelled("pubmedqa", question, LABELS)
doc_to_text, doc_to_choice, doc_to_target = TASK.doc_to_text, TASK.doc_to_choice, TASK.doc_to_target


def load(path: str | Path, limit: int | None = None, ids: str | Path | None = None) -> Loaded:
    """Read `ori_pqal.json` (or a split file of the same layout) into items."""
    items = [TASK.item(doc) for doc in docs(path)]
    warnings = size_warnings(path, len(items))
    if ids is not None:
        wanted = read_ids(ids)
        warnings += size_warnings(ids, len(wanted))
        items = _restrict(items, wanted, ids)
    return Loaded(apply_limit(items, limit, path), TEMPLATE, list(LABELS), warnings)


def size_warnings(path: str | Path, n: int) -> list[str]:
    """A warning when an official PubMedQA file name holds another number of questions."""
    official = OFFICIAL_SIZES.get(Path(path).stem.lower())
    if official and n != official:
        return [f"{path}: PubMedQA's official {Path(path).name} has {official:,} questions; "
                f"this file has {n:,}"]
    return []


def _check_top(path: str | Path, data: Any) -> None:
    if isinstance(data, list):
        raise UserError("a JSON list; PubMedQA's ori_pqal.json is one object {pmid: record}", path)
    if not isinstance(data, dict):
        raise UserError("expected a JSON object {pmid: record} (PubMedQA ori_pqal.json layout)", path)
    if not data:
        raise UserError("benchmark has no items", path)
    if "question" in data and "options" in data:
        raise UserError(WRONG_JSONL, path)
    if not isinstance(next(iter(data.values())), (dict, str)):
        raise UserError("not PubMedQA's ori_pqal.json layout {pmid: {QUESTION, CONTEXTS, final_decision}}", path)
    first = next(iter(data.values()))
    if isinstance(first, str) and first in LABELS:
        raise UserError("this is a label file {pmid: label} (like test_ground_truth.json), not "
                        "ori_pqal.json; give it as `ids` and the records as `path`", path)


def read_ids(path: str | Path) -> dict[str, str | None]:
    """PMIDs from a JSON list, or a dict {pmid: label or anything} such as test_ground_truth.json."""
    text = read_text(path)
    data, _ = parse_json_document(path, text)
    if isinstance(data, dict):
        return {str(k): (v if isinstance(v, str) else None) for k, v in data.items()}
    if isinstance(data, list) and all(isinstance(x, (str, int)) for x in data):
        return {str(x): None for x in data}
    raise UserError("ids must be a JSON list of PMIDs or an object keyed by PMID", path)


def _restrict(items: list[Item], wanted: dict[str, str | None], ids_path: str | Path) -> list[Item]:
    by_id = {it.id: it for it in items}
    missing = [p for p in wanted if p not in by_id]
    if missing:
        raise UserError(f"{len(missing)} of {len(wanted)} PMIDs are not in the benchmark file "
                        f"(first: {', '.join(missing[:3])})", ids_path)
    for pmid, label in wanted.items():
        if label in LABELS and LABELS[by_id[pmid].gold] != label:
            raise UserError(f"pmid {pmid}: label {label!r} differs from the benchmark's "
                            f"final_decision {LABELS[by_id[pmid].gold]!r}", ids_path)
    return [it for it in items if it.id in wanted]
