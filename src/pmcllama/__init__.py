"""pmcllama: build medical language models the PMC-LLaMA way."""
import os

# Never reach a model hub: every model comes from a local folder, a GGUF file or a built-in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
