"""The prompt functions of lm-evaluation-harness's own pubmedqa, medqa_4options and medmcqa tasks,
re-exported so the local task YAMLs here use them unchanged."""
from lm_eval.tasks.medqa.preprocess_medqa import doc_to_target as medqa_doc_to_target  # noqa: F401
from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text as medqa_doc_to_text  # noqa: F401
from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text as pubmedqa_doc_to_text  # noqa: F401
from lm_eval.tasks.medmcqa.utils_medmcqa import doc_to_text as medmcqa_doc_to_text  # noqa: F401
