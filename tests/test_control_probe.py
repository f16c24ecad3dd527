"""The control probe (questions on terms neither the corpus nor the instructions name), the
difference of two paired differences, and the report line that puts the probe over its control."""
from __future__ import annotations

import json

import pytest

from pmcllama.benchmarks.stats import difference_of_differences
from pmcllama.config import build_config
from pmcllama.errors import ConfigError, UserError
from pmcllama.instructions import InstructionsConfig, run
from pmcllama.knowledge.ontology import load_ontology, term_document
from pmcllama.report import make_report
from pmcllama.run import RecipeConfig, _benchmarks

from test_report import fake_eval


def _term(i: int, name: str, parents: list[int], definition: str) -> str:
    isa = "".join(f"is_a: T:{p:07d}\n" for p in parents)
    return f'[Term]\nid: T:{i:07d}\nname: {name}\ndef: "{definition}" []\n{isa}\n'


def tiny_obo(path):
    """A root with a heart branch (T:10, 8 terms) and a nerve branch (T:20, 10 terms); T:40
    sits in both, so its prompts name nerve terms as distractors."""
    terms = [_term(1, "Abnormality", [], "Any abnormality."),
             _term(10, "Heart abnormality", [1], "An abnormality of the heart."),
             _term(20, "Nerve abnormality", [1], "An abnormality of the nerves.")]
    terms += [_term(10 + k, f"Heart defect {k}", [10], f"A heart defect of kind {k}.") for k in range(1, 8)]
    terms += [_term(20 + k, f"Nerve defect {k}", [20], f"A nerve defect of kind {k}.") for k in range(1, 11)]
    terms.append(_term(40, "Heart nerve defect", [10, 20], "A defect of the heart's nerves."))
    path.write_text("format-version: 1.2\nontology: tiny\n\n" + "".join(terms))
    return path


def _cfg(tmp_path, **kg):
    src = {"name": "kg", "format": "kg", "ontology": str(tiny_obo(tmp_path / "tiny.obo")), "root": "T:0000010",
           "limit": 8, "probe_terms": 2, "control_root": "T:0000020", "control_terms": 3, **kg}
    return build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "val_fraction": 0.2, "sources": [src]})


def test_control_terms_are_unknown_to_training(tmp_path):
    cfg = _cfg(tmp_path)
    out = run(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["control"] == "control.jsonl" and manifest["files"]["probe"] == "probe.jsonl"
    control = [json.loads(line) for line in (out / "control.jsonl").read_text().splitlines()]
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert manifest["counts"]["control"] == len(control) == 6  # 3 terms x (definition, parent)
    assert [set(r) for r in control] == [set(probe[0])] * 6  # the probe's layout
    assert {r["meta_info"] for r in control} == {"probe-definition", "probe-parent"}
    onto = load_ontology(cfg.sources[0].ontology)
    selected = onto.select("T:0000010", 8, 0)
    control_ids = {r["id"].rsplit("-", 1)[0] for r in control}
    assert len(control_ids) == 3 and control_ids <= {f"T:{20 + k:07d}" for k in range(1, 11)}
    assert not control_ids & {t.id for t in selected}  # not a probe or training term, nor T:40
    training = "\n".join(m["content"] for name in ("train.jsonl", "val.jsonl")
                         for line in (out / name).read_text().splitlines()
                         for m in json.loads(line)["messages"])
    corpus = "\n".join(term_document(onto, t) for t in selected)
    for i in control_ids:
        t = onto.terms[i]
        assert t.name not in training and t.name not in corpus and t.definition not in training + corpus
    named = {t.name for t in onto.terms.values() if t.name in training and t.id.startswith("T:00000")}
    assert any(n.startswith("Nerve defect") for n in named)  # T:40's prompts did name some: left out


def test_control_probe_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="control_terms and control_root go together"):
        _cfg(tmp_path, control_root=None)
    with pytest.raises(ConfigError, match="another branch"):
        _cfg(tmp_path, control_root="T:0000010")
    with pytest.raises(UserError, match="fewer than control_terms 50"):
        run(_cfg(tmp_path, control_terms=50))


def test_recipe_scores_the_control_beside_the_probe(tmp_path):
    out = run(_cfg(tmp_path))
    recipe = build_config(RecipeConfig, {"out_dir": str(tmp_path / "r")})
    benches = _benchmarks(recipe, {"instructions": out})
    assert [(b.name, b.path) for b in benches] == [("kg-probe", str(out / "probe.jsonl")),
                                                   ("kg-control", str(out / "control.jsonl"))]


def test_difference_of_differences_by_hand():
    # probe: base 1 of 4 right, tuned 3 of 4 (+0.5); control: base 2 of 4, tuned 2 of 4 (0)
    d = difference_of_differences([0, 0, 1, 0], [1, 1, 1, 0], [1, 0, 1, 0], [1, 0, 1, 0], n_boot=0)
    assert (d["first_diff"], d["second_diff"], d["diff"], d["diff_ci95"]) == (0.5, 0.0, 0.5, None)
    assert d["n"] == [4, 4]
    # constant per-item differences: every resample gives the same difference
    d = difference_of_differences([0] * 5, [1] * 5, [0] * 3, [0] * 3, n_boot=200)
    assert d["diff"] == 1.0 and d["diff_ci95"] == [1.0, 1.0]
    # two items with differences {1, 0} against one with 0: resampled means 0, 1/2, 1 with
    # chances 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 1
    d = difference_of_differences([0, 0], [1, 0], [0], [0], n_boot=4000, seed=1)
    assert d["diff"] == 0.5 and d["diff_ci95"] == [0.0, 1.0]
    with pytest.raises(ValueError):
        difference_of_differences([0], [1, 1], [0], [0])


def test_report_puts_the_probe_over_its_control(tmp_path):
    base = fake_eval(tmp_path / "base", "m0", {"kg-probe": ([0] * 10, None), "kg-control": ([0] * 10, None)})
    tuned = fake_eval(tmp_path / "tuned", "m1", {"kg-probe": ([1] * 8 + [0] * 2, None),
                                                 "kg-control": ([1] * 2 + [0] * 8, None)})
    text = make_report([base, tuned], tmp_path / "rep", metric="acc", n_boot=500)
    assert "| tuned | +80.0 | +20.0 | +60.0 | " in text
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    over = rep["probe_over_control"][0]
    assert (over["model"], over["against"], over["n"]) == ("tuned", "base", [10, 10])
    assert over["diff"] == pytest.approx(0.6) and over["diff_ci95"][0] > 0
    alone = make_report([base], tmp_path / "rep2", metric="acc", n_boot=10)
    assert "over its control" not in alone
