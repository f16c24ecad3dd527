"""What an instruction source is: its config (`InstructionSource`) and the formats it may
name. Shared by the readers (`pmcllama.data.records`) and the stage (`pmcllama.instructions`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pmcllama.config import Config
from pmcllama.data.qa import QA_FORMATS
from pmcllama.knowledge.prompts import TASKS

KGTask = Literal["description", "relation", "mcq_definition", "mcq_parent"]
KG_ONLY = ("root", "limit", "seed_terms", "tasks", "probe_terms", "control_root", "control_terms", "ontology",
           "vocabularies", "max_relations")
CHAT_FORMATS = ("mtsdialog", "sharegpt", "messages", "qa_jsonl")
FILE_FORMATS = ("alpaca", *QA_FORMATS, *CHAT_FORMATS)
ONLY_FOR = {"task": ("alpaca",), "answer_format": QA_FORMATS,
            "question_field": ("qa_jsonl",), "answer_field": ("qa_jsonl",)}


class InstructionSource(Config):
    name: str = Field(description="source name, used in record ids and statistics")
    format: Literal["alpaca", "medqa", "medmcqa", "pubmedqa", "mmlu", "mtsdialog", "sharegpt",
                    "messages", "qa_jsonl", "kg"] = Field(
        description="input format of `paths` (see pmcllama.instructions); kg: prompts from an ontology, no paths")
    paths: list[str] = Field(default_factory=list, description="input files (every format but kg)")
    max_records: int | None = Field(None, ge=1, description="keep at most this many records, the first ones (None = all)")
    weight: float = Field(1.0, gt=0, description="sampling weight: <1 keeps that share of the records, >1 repeats "
                          "the training records (2.5: each twice, half of them a third time)")
    task: Literal["auto", "dialogue", "qa"] = Field(
        "auto", description="alpaca: task label; auto = dialogue when a record has an input, else qa")
    answer_format: Literal["paper", "letter", "letter_rationale"] = Field(
        "paper", description="medqa/medmcqa/pubmedqa/mmlu answers: the paper's '###Answer: OPTION C IS CORRECT.', "
        "'C. text', or rationale + 'The answer is C. text'")
    question_field: str | None = Field(None, description="qa_jsonl: question field (None = question or Question)")
    answer_field: str | None = Field(None, description="qa_jsonl: answer field (None = answer or Answer)")
    ontology: str = Field("hpo", description="kg: built-in ontology (hpo, icd10), an .obo file, or a UMLS folder "
                          "with MRCONSO.RRF, MRDEF.RRF (+ MRREL.RRF, MRSTY.RRF)")
    vocabularies: list[str] = Field(default_factory=list, description="kg, UMLS: source vocabularies (SAB) of "
                                    "definitions and relations, most preferred first (empty = all)")
    max_relations: int = Field(10, ge=0, description="kg, UMLS: at most this many non-hierarchical relations per concept")
    root: str | None = Field(None, description="kg: only terms below this term id (None = all terms)")
    limit: int | None = Field(None, ge=1, description="kg: at most this many terms (same as the corpus stage)")
    seed_terms: int = Field(0, description="kg: seed of the term selection (same as the corpus stage)")
    tasks: list[KGTask] = Field(default_factory=lambda: list(TASKS), min_length=1,
                                description="kg: prompt kinds to build")
    probe_terms: int = Field(0, ge=0, description="kg: the first N selected terms form the knowledge probe, not training")
    control_root: str | None = Field(None, description="kg: another branch (term id) for the control probe: "
                                     "questions on terms in neither the corpus nor the instructions")
    control_terms: int = Field(0, ge=0, description="kg: the control probe's number of terms, selected below "
                               "control_root as the probe's are (same limit and seed), never named in training")

    @model_validator(mode="after")
    def _check_format(self) -> "InstructionSource":
        if self.format != "kg":
            if not self.paths:
                raise ValueError(f"{self.format} source '{self.name}' needs paths: [file, ...]")
            given = sorted(set(KG_ONLY) & self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)} only apply to format: kg (source '{self.name}')")
        elif self.paths:
            raise ValueError(f"kg source '{self.name}' reads `ontology`, not `paths`")
        elif bool(self.control_terms) != bool(self.control_root):
            raise ValueError(f"kg source '{self.name}': control_terms and control_root go together")
        elif self.control_root is not None and self.control_root == self.root:
            raise ValueError(f"kg source '{self.name}': control_root must be another branch than root")
        wrong = [k for k, fmts in ONLY_FOR.items() if k in self.model_fields_set and self.format not in fmts]
        if wrong:
            raise ValueError("; ".join(f"{k} only apply to format: {', '.join(ONLY_FOR[k])}" for k in wrong)
                             + f" (source '{self.name}')")
        return self
