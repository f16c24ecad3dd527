"""Every example config in examples/ loads as its stage's config, and its paths exist when
the development data beside the project is there."""
from pathlib import Path

import pytest

from pmcllama.config import load_config
from pmcllama.corpus import CorpusConfig
from pmcllama.instructions import InstructionsConfig

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"corpus": CorpusConfig, "instructions": InstructionsConfig}


def _examples():
    return sorted((ROOT / "examples").glob("*.yaml"))


def test_every_example_names_a_known_stage():
    assert _examples()
    for path in _examples():
        assert path.stem.split("-")[0] in STAGES, path.name


def _load(path: Path):
    return load_config(STAGES[path.stem.split("-")[0]], path)


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_loads(path):
    assert _load(path).sources


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_inputs_exist(path, shared_data):
    cfg = _load(path)
    paths = [p for s in cfg.sources for p in s.paths]
    paths += [getattr(s, "ontology", "") for s in cfg.sources if str(getattr(s, "ontology", "")).endswith(".obo")]
    paths += [spec.split(":", 1)[-1] for spec in cfg.decontaminate]
    assert paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, missing
