"""pmcllama's loglik prompts are character for character those of lm-evaluation-harness's
installed tasks (pubmedqa, medqa_4options, medmcqa, mmlu_*), checked against lm-eval's own
doc_to_text functions and templates."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pmcllama.benchmarks import medmcqa, medqa, mmlu, pubmedqa

lm_eval = pytest.importorskip("lm_eval")
TASKS = Path(os.path.dirname(lm_eval.__file__)) / "tasks"
ODD = "  Which of: a\ttab, trailing space ?  "  # whitespace is kept (or stripped) as lm-eval does


def test_pubmedqa_prompt_is_lm_evals():
    from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text

    doc = {"QUESTION": ODD, "CONTEXTS": ["First part. ", "Second\npart."]}
    assert pubmedqa.build_prompt(doc["QUESTION"], doc["CONTEXTS"]) == doc_to_text(doc)
    spec = yaml.safe_load((TASKS / "pubmedqa" / "pubmedqa.yaml").read_text().replace("!function", ""))
    assert spec["doc_to_choice"] == pubmedqa.LABELS


def test_medqa_prompt_is_lm_evals():
    from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text

    opts = {"A": "Alpha ", "B": " Beta", "C": "Gamma", "D": "Delta"}
    doc = {"sent1": ODD, "ending0": opts["A"], "ending1": opts["B"], "ending2": opts["C"], "ending3": opts["D"]}
    assert medqa.letters_prompt(ODD, opts) == doc_to_text(doc)


def test_medmcqa_prompt_is_lm_evals():
    from lm_eval.tasks.medmcqa.utils_medmcqa import doc_to_text

    doc = {"question": ODD, "opa": "one", "opb": " two", "opc": "three ", "opd": "4"}
    assert medmcqa.build_prompt(ODD, [doc[k] for k in medmcqa.OPTIONS]) == doc_to_text(doc)


@pytest.mark.parametrize("subject", sorted(mmlu.TEST_SIZES))
def test_mmlu_prompt_is_lm_evals(subject):
    from lm_eval.utils import apply_template

    default = yaml.safe_load((TASKS / "mmlu" / "default" / "_default_template_yaml").read_text())
    task = yaml.safe_load((TASKS / "mmlu" / "default" / f"mmlu_{subject}.yaml").read_text())
    options = ["one", " two", "three ", "4"]
    expected = task["description"] + apply_template(default["doc_to_text"], {"question": ODD, "choices": options})
    assert mmlu.build_prompt(subject, ODD, options) == expected
    assert default["doc_to_choice"] == mmlu.LABELS
