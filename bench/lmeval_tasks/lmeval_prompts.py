"""The prompt functions of lm-evaluation-harness's own pubmedqa and medqa_4options tasks,
re-exported so the local task YAMLs here use them unchanged."""
from lm_eval.tasks.medqa.preprocess_medqa import doc_to_target as medqa_doc_to_target  # noqa: F401
from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text as medqa_doc_to_text  # noqa: F401
from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text as pubmedqa_doc_to_text  # noqa: F401
