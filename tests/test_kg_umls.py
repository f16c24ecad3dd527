"""UMLS RRF files (MRCONSO, MRDEF, MRREL, MRSTY) as a knowledge source, on tiny fixtures that
follow the documented column layouts (every row ends with a pipe)."""
from __future__ import annotations

import gzip
import json
import random

import pytest

from pmcllama.config import build_config
from pmcllama.errors import UserError
from pmcllama.instructions import InstructionsConfig, run
from pmcllama.knowledge import prompts as P
from pmcllama.knowledge.graph import relation_phrase
from pmcllama.knowledge.umls import COLUMNS, load_umls

DM, T2, T1, GDM, MET, INS, DIS, PREG = ("C0011849", "C0011860", "C0011854", "C0085207", "C0025598",
                                         "C0021641", "C0012634", "C0032961")


def row(table: str, **values) -> str:
    cols = COLUMNS[table].split("|")
    assert set(values) <= set(cols), set(values) - set(cols)
    return "|".join(values.get(c, "") for c in cols) + "|"


def conso(cui, text, pref=True, lat="ENG", sab="MSH", suppress="N"):
    flags = {"TS": "P", "STT": "PF", "ISPREF": "Y"} if pref else {"TS": "S", "STT": "PF", "ISPREF": "N"}
    return row("MRCONSO", CUI=cui, LAT=lat, SAB=sab, STR=text, SUPPRESS=suppress, **flags)


def rel(cui1, rel_, cui2, rela="", sab="MSH"):
    return row("MRREL", CUI1=cui1, REL=rel_, CUI2=cui2, RELA=rela, SAB=sab, SUPPRESS="N")


MRCONSO = [
    conso(DM, "Diabetes mellitus"), conso(DM, "DM", pref=False), conso(DM, "Diabète sucré", lat="FRE"),
    conso(T2, "Type 2 diabetes mellitus"), conso(T2, "Diabetes Mellitus, Non-Insulin-Dependent", pref=False),
    conso(T2, "NIDDM", pref=False, suppress="O"),
    conso(T1, "Type 1 diabetes mellitus"), conso(GDM, "Gestational diabetes"), conso(MET, "Metformin"),
    conso(INS, "Insulin"), conso(DIS, "Disease"), conso(PREG, "Pregnancy"),
]
MRDEF = [
    row("MRDEF", CUI=DM, SAB="NCI", DEF="A metabolic disorder with <b>high</b> blood glucose.", SUPPRESS="N"),
    row("MRDEF", CUI=DM, SAB="MSH", DEF="A heterogeneous group of disorders of hyperglycemia.", SUPPRESS="N"),
    row("MRDEF", CUI=T2, SAB="MSH", DEF="Diabetes with insulin resistance.", SUPPRESS="N"),
    row("MRDEF", CUI=T1, SAB="MSH", DEF="Diabetes from loss of insulin secretion.", SUPPRESS="N"),
    row("MRDEF", CUI=GDM, SAB="MSH", DEF="Diabetes first found in pregnancy.", SUPPRESS="N"),
    row("MRDEF", CUI=MET, SAB="MSH", DEF="A biguanide that lowers blood glucose.", SUPPRESS="N"),
    row("MRDEF", CUI=INS, SAB="MSH", DEF="A pancreatic hormone.", SUPPRESS="N"),
]
MRREL = [
    rel(T2, "PAR", DM), rel(DM, "CHD", T2),  # the same link both ways
    rel(T1, "PAR", DM, rela="inverse_isa"),
    rel(DM, "CHD", GDM),  # GDM is a child of DM
    rel(DM, "PAR", DIS),
    rel(T2, "RO", MET, rela="may_treat"), rel(MET, "RO", T2, rela="may_be_treated_by"),
    rel(T1, "RO", INS, rela="may_treat"),
    rel(GDM, "RB", PREG),  # pregnancy is broader than gestational diabetes
    rel(MET, "RO", INS),  # RO without RELA: left out
]
MRSTY = [
    row("MRSTY", CUI=DM, TUI="T047", STY="Disease or Syndrome"),
    row("MRSTY", CUI=T2, TUI="T047", STY="Disease or Syndrome"),
    row("MRSTY", CUI=MET, TUI="T109", STY="Organic Chemical"),
    row("MRSTY", CUI=MET, TUI="T121", STY="Pharmacologic Substance"),
]


def write_umls(folder, extra: dict | None = None, gz: tuple = ()):
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"MRCONSO": MRCONSO, "MRDEF": MRDEF, "MRREL": MRREL, "MRSTY": MRSTY}
    for table, rows in tables.items():
        text = "\n".join(rows + (extra or {}).get(table, [])) + "\n"
        if table in gz:
            with gzip.open(folder / f"{table}.RRF.gz", "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (folder / f"{table}.RRF").write_text(text, encoding="utf-8")
    return folder


def test_fixture_rows_follow_the_layout():
    assert [len(r.split("|")) - 1 for r in (MRCONSO[0], MRDEF[0], MRREL[0], MRSTY[0])] == [18, 8, 16, 6]


def test_load_umls(tmp_path):
    onto = load_umls(write_umls(tmp_path / "META", gz=("MRREL",)))
    dm, t2, gdm, met = (onto.terms[c] for c in (DM, T2, GDM, MET))
    assert dm.name == "Diabetes mellitus" and dm.synonyms == ["DM"]  # French and suppressed strings left out
    assert dm.definition == "A metabolic disorder with high blood glucose."  # first one, tags stripped
    assert t2.synonyms == ["Diabetes Mellitus, Non-Insulin-Dependent"]
    assert t2.parents == [DM] and onto.terms[T1].parents == [DM] and gdm.parents == [DM]
    assert sorted(onto.children[DM]) == sorted([T1, T2, GDM])
    assert met.relations == [("may_treat", T2)]
    assert t2.relations == [("may_be_treated_by", MET)]
    assert gdm.relations == [("narrower_than", PREG)]
    assert onto.terms[INS].relations == [("may_treat", T1)]
    assert onto.semantic_types[MET] == ["Organic Chemical", "Pharmacologic Substance"]
    assert onto.terms[DIS].definition == "" and not onto.usable(onto.terms[DIS])  # a named neighbour only
    assert {t.id for t in onto.select()} == {DM, T2, T1, GDM, MET, INS}


def test_umls_vocabularies_prefer_and_filter(tmp_path):
    onto = load_umls(write_umls(tmp_path / "META"), vocabularies=["MSH"])
    assert onto.terms[DM].definition == "A heterogeneous group of disorders of hyperglycemia."


def test_umls_prompts_read_as_english(tmp_path):
    onto = load_umls(write_umls(tmp_path / "META"))
    rng = random.Random(0)
    d = P.description(onto, onto.terms[T2], rng)
    assert d.answer == ("Diabetes with insulin resistance. It is also known as Diabetes Mellitus, "
                        "Non-Insulin-Dependent. Its UMLS semantic type is disease or syndrome.")
    answers = [p.answer for p in P.relations(onto, onto.terms[T2], rng)]
    assert answers == ["Type 2 diabetes mellitus is a kind of diabetes mellitus.",
                       "Type 2 diabetes mellitus may be treated by metformin."]
    (m,) = P.relations(onto, onto.terms[MET], rng)
    assert m.answer == "Metformin may treat type 2 diabetes mellitus."
    assert "metformin" in m.question and "type 2 diabetes mellitus" in m.question
    (g,) = [p.answer for p in P.relations(onto, onto.terms[GDM], rng) if "narrower" in p.answer]
    assert g == "Gestational diabetes is a narrower concept than pregnancy."


@pytest.mark.parametrize("rel_id, words", [
    ("may_treat", "may treat"), ("may_be_treated_by", "may be treated by"), ("part_of", "is part of"),
    ("associated_with", "is associated with"), ("has_finding_site", "has its finding site in"),
    ("isa", "is a kind of"), ("clinically_associated_with", "is clinically associated with"),
])
def test_relation_phrase(rel_id, words):
    assert relation_phrase(rel_id) == words


def test_wrong_column_count_names_file_and_line(tmp_path):
    bad = "C0000001|ENG|P|L1|PF|S1|Y|A1||||MSH|PT|D1|Too short|0|N|"  # 17 fields
    folder = write_umls(tmp_path / "META", extra={"MRCONSO": [bad]})
    with pytest.raises(UserError) as err:
        load_umls(folder)
    assert err.value.path == str(folder / "MRCONSO.RRF") and err.value.line == len(MRCONSO) + 1
    assert "17 columns, expected 18 (MRCONSO: CUI|LAT|" in str(err.value)
    folder = write_umls(tmp_path / "M2", extra={"MRDEF": ["C0000001|A1|AT1||MSH|a|b|N||"]})
    with pytest.raises(UserError, match=r"MRDEF.RRF:8: 9 columns, expected 8 \(MRDEF"):
        load_umls(folder)
    folder = write_umls(tmp_path / "M4", extra={"MRDEF": ["C0000001|A1|AT1||MSH|no trailing pipe|N|Y"]})
    with pytest.raises(UserError, match=r"MRDEF.RRF:8: the row does not end with '\|'"):
        load_umls(folder)
    folder = write_umls(tmp_path / "M3", extra={"MRSTY": [row("MRSTY", CUI="X123", STY="Finding")]})
    with pytest.raises(UserError, match="MRSTY.RRF:5: first column 'X123' is not a CUI"):
        load_umls(folder)


def test_missing_required_file(tmp_path):
    folder = write_umls(tmp_path / "META")
    (folder / "MRDEF.RRF").unlink()
    with pytest.raises(UserError, match="not a UMLS release folder: MRDEF.RRF is missing"):
        load_umls(folder)


def _cfg(tmp_path, folder, **kw):
    return build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "val_fraction": 0, **kw, "sources": [
        {"name": "umls", "format": "kg", "ontology": str(folder)}]})


def test_umls_stage_stop_and_skip(tmp_path):
    bad = rel(T2, "PAR", DM)[:-1]  # 15 columns
    folder = write_umls(tmp_path / "META", extra={"MRREL": [bad]})
    with pytest.raises(UserError, match=r"MRREL.RRF:11: 15 columns, expected 16"):
        run(_cfg(tmp_path, folder))
    out = run(_cfg(tmp_path, folder, on_error="skip"))
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["source"], r["line"], r["path"]) for r in rejected] == [("umls", 11, str(folder / "MRREL.RRF"))]
    assert rejected[0]["record"] == bad
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["rejected"] == 1
    assert stats["sources"]["umls"]["tasks"]["description"] == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.rsplit("/", 1)[-1] for p in _input_paths(manifest)) == [
        "MRCONSO.RRF", "MRDEF.RRF", "MRREL.RRF", "MRSTY.RRF"]
    texts = [json.loads(line)["messages"][-1]["content"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert "Metformin may treat type 2 diabetes mellitus." in texts


def _input_paths(manifest):
    return [i["path"] if isinstance(i, dict) else i for i in manifest["inputs"]]


def test_vocabularies_need_a_umls_folder(tmp_path):
    cfg = build_config(InstructionsConfig, {"out": str(tmp_path / "out"), "sources": [
        {"name": "icd", "format": "kg", "ontology": "icd10", "vocabularies": ["MSH"]}]})
    with pytest.raises(UserError, match="vocabularies apply to a UMLS folder only"):
        run(cfg)
