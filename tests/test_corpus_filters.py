"""Corpus quality filters: each step alone, then per-source settings in the stage."""
from __future__ import annotations

import json

import pytest

from pmcllama.corpus import CorpusConfig, run
from pmcllama.data.filters import (StripBoilerplate, apply_filters, english, quality_steps, repeated_line_fraction,
                                   repeated_lines, stopword_ratio, symbol_fraction, symbol_ratio, too_short)
from pmcllama.data.readers import Document

ENGLISH = ("The heart is a muscular organ that pumps blood through the blood vessels of the circulatory "
           "system. It is divided into four chambers, and the blood that it pumps carries oxygen to all of "
           "the tissues of the body, while it also removes the carbon dioxide that they produce.")
GERMAN = ("Das Herz ist ein muskuläres Hohlorgan, das durch rhythmische Kontraktionen Blut durch den Körper "
          "pumpt und so die Versorgung aller Organe sichert. Es besteht aus zwei Hälften mit jeweils einem "
          "Vorhof und einer Kammer, getrennt durch die Herzscheidewand zwischen rechter und linker Seite.")
TERMS = " ".join(["aorta valve ventricle atrium myocardium"] * 8)


def doc(text: str) -> Document:
    return Document(text, "s", "1", "f")


def test_english_stopword_ratio():
    assert stopword_ratio(ENGLISH)[0] > 0.3 and stopword_ratio(GERMAN)[0] < 0.05
    check = english(0.1, min_words=30)
    assert check(doc(ENGLISH)) is None
    assert check(doc(GERMAN)) == "not_english"
    assert check(doc(TERMS)) == "not_english"
    assert check(doc("Herz und Lunge sind Organe.")) is None  # too few words to judge


def test_repeated_lines():
    text = "\n".join(["Home | About | Contact", "A real line of text.", "Home | About | Contact",
                      "home | about | contact", "Another line."])
    assert repeated_line_fraction(text) == pytest.approx(2 / 5)
    assert repeated_lines(0.3)(doc(text)) == "repeated_lines"
    assert repeated_lines(0.5)(doc(text)) is None
    assert repeated_lines(0.1)(doc("same\nsame\nsame")) is None  # fewer than 4 lines: not judged


def test_symbol_ratio():
    assert symbol_fraction("abc def") == 0
    assert symbol_fraction("a|b|c|d") == pytest.approx(3 / 7)
    table = "| 1 | 2 | 3 |\n|---|---|---|\n| 4 | 5 | 6 |"
    assert symbol_ratio(0.25)(doc(table)) == "symbol_ratio"
    assert symbol_ratio(0.25)(doc(ENGLISH)) is None


def test_boilerplate_lines_and_citation_runs():
    refs = ["1. Smith J, Jones K. Heart failure. Lancet. 2001;357:1-9.",
            "2. Brown A, et al. Valve disease. N Engl J Med. 2003;12:3-4.",
            "3. Lee C, Park D. Arrhythmia. Circulation. 1999;99:5-6."]
    text = "\n".join(["© 2020 The Authors. All rights reserved.",
                      "Sepsis is common (Smith et al., 2003; Jones et al. 2005) and deadly (Lee et al.).",
                      "This article is distributed under the terms of the Creative Commons Attribution License.",
                      *refs, "Smith et al. (2003) showed a benefit."])
    strip = StripBoilerplate(min_run=3)
    assert strip.clean(text) == ("Sepsis is common and deadly (Lee et al.).\n"
                                 "Smith et al. (2003) showed a benefit.")
    assert strip.removed == {"licence_lines": 2, "citation_lines": 3, "inline_citations": 1}
    # two citation lines are not a run of three: kept
    assert StripBoilerplate(min_run=3).clean("\n".join(refs[:2])) == "\n".join(refs[:2])


def test_steps_first_reason_wins_and_boilerplate_can_empty():
    steps, strip = quality_steps(20, language="en", language_min_words=5)
    d = doc("Copyright 2020 Elsevier Ltd. All rights reserved.")
    assert apply_filters(d, steps) == "too_short" and d.text == ""
    assert apply_filters(doc(GERMAN), steps) == "not_english"
    assert apply_filters(doc(ENGLISH), steps) is None
    steps, strip = quality_steps(20, boilerplate=False, max_symbol_ratio=None, max_repeated_lines=None)
    assert strip is None and len(steps) == 1


def test_stage_filters_per_source(tmp_path):
    rows = [{"id": "en", "text": ENGLISH}, {"id": "de", "text": GERMAN},
            {"id": "tbl", "text": "\n".join(["| 1 | 2 | 3 | 4 |"] * 3 + ["| 5 | 6 | 7 | 8 |"] * 3)},
            {"id": "lic", "text": "Copyright (c) 2019 the authors. Licensed under CC-BY 4.0."}]
    for name in ("strict", "loose"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", dedup=False, near_dedup=None,
                       quality={"language": "en"},
                       sources=[{"name": "strict", "paths": [str(tmp_path / "strict.jsonl")]},
                                {"name": "loose", "paths": [str(tmp_path / "loose.jsonl")], "min_chars": 5,
                                 "quality": {"boilerplate": False, "max_repeated_lines": None,
                                             "max_symbol_ratio": None}}])
    out = run(cfg)
    stats = json.loads((out / "stats.json").read_text())["sources"]
    assert stats["strict"]["dropped_by_reason"] == {"not_english": 1, "repeated_lines": 1, "too_short": 1}
    assert stats["strict"]["kept"] == 1 and stats["strict"]["events"] == {"removed_licence_lines": 1}
    assert stats["loose"]["kept"] == 4 and stats["loose"]["dropped"] == 0
    for st in stats.values():  # every input document accounted for
        assert st["kept"] + st["dropped"] == st["documents_in"] == 4
    excl = [json.loads(x) for x in (out / "exclusions.jsonl").read_text().splitlines()]
    assert {(e["id"], e["reason"]) for e in excl} == {("de", "not_english"), ("tbl", "repeated_lines"),
                                                      ("lic", "too_short")}


def test_drops_carry_what_was_measured(tmp_path):
    short, german = too_short(50)(doc("abc")), english(0.1, min_words=30)(doc(GERMAN))
    assert (short, short.detail) == ("too_short", "3 characters < 50")
    assert german == "not_english" and german.detail.startswith("English function words 0.0")
    table = "| 1 | 2 | 3 |\n|---|---|---|\n| 4 | 5 | 6 |"
    assert symbol_ratio(0.25)(doc(table)).detail.startswith("symbols 0.") and too_short(1)(doc("abc")) is None
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "de", "text": GERMAN}) + "\n" +
                                       json.dumps({"id": "en", "text": ENGLISH}) + "\n", encoding="utf-8")
    cfg = CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", quality={"language": "en"},
                       sources=[{"name": "s", "paths": [str(tmp_path / "in.jsonl")]}])
    excl = [json.loads(x) for x in (run(cfg) / "exclusions.jsonl").read_text().splitlines()]
    assert [(e["id"], e["reason"], e["detail"]) for e in excl] == [("de", "not_english", german.detail)]
