"""STAGE 1 corpus: readers, cleaning, filters, shards, bad input, reruns, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pmcllama.config import load_config
from pmcllama.corpus import CorpusConfig, run
from pmcllama.data.filters import ExactDedup, StripBoilerplate, apply_filters, normalize, too_short
from pmcllama.data.readers import Document
from pmcllama.data.shards import read_corpus
from pmcllama.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]

LONG_A = "The aorta is the largest artery in the body, carrying oxygenated blood from the heart."
LONG_B = "Insulin is a peptide hormone produced by the beta cells of the pancreatic islets."
LONG_C = "The   mitral valve\tlies between the left atrium and the left ventricle of the heart.  "


def cfg_for(tmp_path: Path, sources: list[dict], **kw) -> CorpusConfig:
    return CorpusConfig(out=str(tmp_path / "out"), tokenizer="tiny-llama", sources=sources, **kw)


def decoded_docs(tok, shards) -> list[str]:
    out = []
    for i in range(shards.num_docs):
        ids = shards.doc(i)
        assert ids[-1] == tok.eos_token_id
        out.append(tok.decode(ids[:-1].tolist(), clean_up_tokenization_spaces=False))
    return out


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    text = tmp_path / "notes.txt"
    text.write_text(f"{LONG_A}\n\nshort one\n\n\n\n{LONG_C}\n", encoding="utf-8")
    jsonl = tmp_path / "qa.jsonl"
    rows = [{"id": "r1", "text": LONG_B}, {"text": "tiny"}, {"text": LONG_B},  # exact duplicate
            {"id": 7, "text": LONG_A}]  # duplicate of a text paragraph (across sources)
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return {"text": text, "jsonl": jsonl}


# --- cleaning ---------------------------------------------------------------------------

def test_normalize():
    assert normalize("  a \t\t b  \r\n\r\n\r\n\n c\u0065\u0301  ") == "a b\n\nc\u00e9"
    assert normalize("x \n \n \n y") == "x\n\ny"
    assert normalize("one\ntwo") == "one\ntwo"


def test_filters_first_reason_wins():
    dedup = ExactDedup()
    filters = [too_short(5), dedup]
    doc = Document("hello world", "s", "1", "f")
    assert apply_filters(doc, filters) is None
    assert apply_filters(doc, filters) == "duplicate"
    assert apply_filters(Document("hi", "s", "2", "f"), filters) == "too_short"
    assert len(dedup.seen) == 1  # a too-short document never reaches the dedup filter


# --- the stage --------------------------------------------------------------------------

@pytest.mark.slow
def test_text_jsonl_obo_round_trip(tmp_path, inputs, tiny_tokenizer):
    from pmcllama.knowledge.ontology import load_ontology, term_document

    cfg = cfg_for(tmp_path, [
        {"name": "notes", "paths": [str(inputs["text"])], "split_paragraphs": True, "weight": 2},
        {"name": "qa", "paths": [str(inputs["jsonl"])]},
        {"name": "hpo", "paths": ["hpo"], "obo_root": "HP:0001626", "limit": 20},
    ])
    out = run(cfg)
    manifest, shards = read_corpus(out)
    tok = tiny_tokenizer
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == len(tok) == 1024
    assert manifest["eos_token_id"] == tok.eos_token_id and manifest["tokenizer"] == "tiny-llama"
    assert shards["notes"].tokens.dtype == np.dtype("<u2")

    assert decoded_docs(tok, shards["notes"]) == [LONG_A, normalize(LONG_C)]
    assert decoded_docs(tok, shards["qa"]) == [LONG_B]
    onto = load_ontology("hpo")
    expected = [normalize(term_document(onto, t)) for t in onto.select("HP:0001626", 20, 0)]
    assert decoded_docs(tok, shards["hpo"]) == expected

    for name, sh in shards.items():  # index consistent: contiguous, lengths sum to the file
        starts, lengths = sh.index[:, 0], sh.index[:, 1]
        assert starts[0] == 0 and (starts[1:] == starts[:-1] + lengths[:-1]).all()
        assert lengths.sum() == sh.num_tokens == len(sh.tokens) == manifest["sources"][name]["tokens"]
        assert manifest["sources"][name]["documents"] == sh.num_docs
    assert manifest["sources"]["notes"]["weight"] == 2.0

    stats = json.loads((out / "stats.json").read_text())
    assert stats["sources"]["notes"]["documents_in"] == 3
    assert stats["sources"]["notes"]["dropped_by_reason"] == {"too_short": 1}
    assert stats["sources"]["qa"]["documents_in"] == 4
    assert stats["sources"]["qa"]["dropped_by_reason"] == {"duplicate": 2, "too_short": 1}
    assert stats["sources"]["hpo"]["kept"] == 20
    assert manifest["counts"] == {"documents_in": 27, "documents_kept": 23, "documents_dropped": 4,
                                  "tokens": sum(s.num_tokens for s in shards.values())}
    excl = [json.loads(x) for x in (out / "exclusions.jsonl").read_text().splitlines()]
    assert [(e["source"], e["reason"], e["line"]) for e in excl] == [
        ("notes", "too_short", 3), ("qa", "too_short", 2), ("qa", "duplicate", 3), ("qa", "duplicate", 4)]
    assert excl[3]["id"] == "7" and excl[1]["id"].endswith("qa.jsonl:2")
    assert any(i["path"].endswith("hp.obo") for i in manifest["inputs"])


def test_rerun_is_noop_and_force_redoes(tmp_path, inputs, capsys):
    cfg = cfg_for(tmp_path, [{"name": "qa", "paths": [str(inputs["jsonl"])]}])
    out = run(cfg)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    run(cfg)
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    assert "up to date" in capsys.readouterr().out
    run(cfg, force=True)
    assert (out / "manifest.json").stat().st_mtime_ns != mtime
    assert "wrote" in capsys.readouterr().out
    inputs["jsonl"].write_text(json.dumps({"text": LONG_C}) + "\n", encoding="utf-8")
    run(cfg)  # a changed input redoes it
    assert read_corpus(out)[0]["counts"]["documents_in"] == 1


def test_folder_walk_and_max_documents(tmp_path):
    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text(LONG_B, encoding="utf-8")
    (folder / "sub" / "a.txt").write_text(LONG_A, encoding="utf-8")
    (folder / ".hidden.txt").write_text(LONG_C, encoding="utf-8")
    (folder / "skip.csv").write_text("x,y", encoding="utf-8")
    out = run(cfg_for(tmp_path, [{"name": "books", "paths": [str(folder)]}]))
    _, shards = read_corpus(out)
    assert shards["books"].num_docs == 2
    stats = json.loads((out / "stats.json").read_text())["sources"]["books"]
    assert stats["files"] == 2
    out = run(cfg_for(tmp_path, [{"name": "books", "paths": [str(folder)], "max_documents": 1}]))
    assert read_corpus(out)[1]["books"].num_docs == 1



def test_skipped_inputs_listed(tmp_path, capsys):
    books, rows = tmp_path / "books", tmp_path / "rows"
    (books / "sub").mkdir(parents=True)
    rows.mkdir()
    (books / "b.md").write_text(LONG_B, encoding="utf-8")
    (books / "sub" / "foo.csv").write_text("x,y", encoding="utf-8")
    (books / "LICENSE").write_text("CC BY 4.0", encoding="utf-8")
    (books / ".hidden.csv").write_text("x,y", encoding="utf-8")  # hidden: neither read nor listed
    (rows / "r.jsonl").write_text(json.dumps({"text": LONG_A}) + "\n", encoding="utf-8")
    (rows / "notes.txt").write_text(LONG_C, encoding="utf-8")  # text, but this source reads jsonl
    out = run(cfg_for(tmp_path, [{"name": "books", "paths": [str(books)]},
                                 {"name": "rows", "paths": [str(rows)], "format": "jsonl"}]))
    expected = [("books", str(books / "LICENSE"), "not_data"),
                ("books", str(books / "sub" / "foo.csv"), "other_format"),
                ("rows", str(rows / "notes.txt"), "other_format")]
    report = json.loads((out / "corpus_report.json").read_text())
    assert [(s["source"], s["path"], s["reason"]) for s in report["skipped_inputs"]] == expected
    assert report["skipped_inputs_count"] == 3
    assert "suffix '.csv'" in report["skipped_inputs"][1]["detail"]
    assert "not a jsonl file (suffix '.txt')" in report["skipped_inputs"][2]["detail"]
    manifest, shards = read_corpus(out)
    assert manifest["skipped_inputs"] == report["skipped_inputs"] and manifest["skipped_inputs_count"] == 3
    assert shards["books"].num_docs == 1 and shards["rows"].num_docs == 1
    summary = (out / "summary.md").read_text()
    assert "Skipped inputs: 3 file(s)" in summary and str(books / "sub" / "foo.csv") in summary
    printed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[corpus] skipped")]
    assert printed == ["[corpus] skipped 3 file(s) in the input folders that are not read (not_data 1, "
                       "other_format 2); listed under skipped_inputs in corpus_report.json"]


BAD_LINES = [
    ('{"text": ', "line is not JSON"),
    ('{"body": "x"}', "no 'text' field"),
    ('{"text": 5}', "not a string"),
]


@pytest.mark.parametrize("bad,message", BAD_LINES)
def test_malformed_jsonl_stop(tmp_path, bad, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": LONG_A}) + "\n\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)]}]))
    assert err.value.path == str(path) and err.value.line == 3
    assert "bad.jsonl:3" in str(err.value)


def test_malformed_and_missing_skip(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{json.dumps({"text": LONG_A})}\n{{"text": \n{{"text": 5}}\n', encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 " * 20)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    paths = [str(path), str(tmp_path / "gone.txt"), str(latin), str(empty)]
    out = run(cfg_for(tmp_path, [{"name": "s", "paths": paths}], on_error="skip"))
    stats = json.loads((out / "stats.json").read_text())["sources"]["s"]
    assert stats["kept"] == 1 and stats["documents_in"] == 6
    assert stats["dropped_by_reason"] == {"bad_json": 1, "empty_file": 1, "missing_file": 1,
                                          "not_utf8": 1, "text_not_string": 1}
    excl = [json.loads(x) for x in (out / "exclusions.jsonl").read_text().splitlines()]
    assert {(Path(e["file"]).name, e["line"], e["reason"]) for e in excl} == {
        ("bad.jsonl", 2, "bad_json"), ("bad.jsonl", 3, "text_not_string"), ("gone.txt", None, "missing_file"),
        ("latin.txt", 1, "not_utf8"), ("empty.txt", None, "empty_file")}
    assert all(e["detail"] for e in excl)


def test_missing_file_stop(tmp_path):
    with pytest.raises(UserError, match="not found") as err:
        run(cfg_for(tmp_path, [{"name": "s", "paths": [str(tmp_path / "gone.txt")]}]))
    assert err.value.path == str(tmp_path / "gone.txt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"ok\n\xff\xfe\n", "UTF-8")])
def test_bad_text_file_stop(tmp_path, content, message):
    path = tmp_path / "x.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)]}]))
    assert err.value.path == str(path)
    if content:
        assert err.value.line == 2


def test_source_with_nothing_kept(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("too short", encoding="utf-8")
    with pytest.raises(UserError, match="source 's' has no documents left .*too_short=1"):
        run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)]}]))


def test_unknown_suffix(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(LONG_A, encoding="utf-8")
    with pytest.raises(UserError, match="format"):
        run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)]}]))
    out = run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)], "format": "text"}]))
    assert read_corpus(out)[1]["s"].num_docs == 1


@pytest.mark.parametrize("override,message", [
    ("sources=[]", "at least 1"),
    ("sources=[{name: 'a b', paths: [x.txt]}]", "letters, digits"),
    ("sources=[{name: a, paths: [x.txt]}, {name: a, paths: [y.txt]}]", "unique"),
    ("sources=[{name: a, paths: [x.txt], weight: 0}]", "greater than 0"),
    ("sources=[{name: a, paths: [x.txt], fromat: text}]", "did you mean"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CorpusConfig, None, [override])


def test_cli_missing_file_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pmcllama", "corpus", f"out={tmp_path / 'out'}", "tokenizer=tiny-llama",
         f"sources=[{{name: a, paths: [{tmp_path / 'x.txt'}]}}]"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "x.txt" in lines[0] and "not found" in lines[0]


@pytest.mark.shared
@pytest.mark.slow
def test_real_textbook(tmp_path, shared_data, tiny_tokenizer):
    path = shared_data / "corpus" / "textbook" / "anatomy_physiology_2e_sections.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    out = run(cfg_for(tmp_path, [{"name": "textbook", "paths": [str(path)]}]))
    manifest, shards = read_corpus(out)
    stats = json.loads((out / "stats.json").read_text())["sources"]["textbook"]
    n_lines = sum(1 for line in path.open(encoding="utf-8") if line.strip())
    assert stats["documents_in"] == n_lines
    assert stats["kept"] + stats["dropped"] == n_lines and stats["kept"] > 0.9 * n_lines
    sh = shards["textbook"]
    assert sh.num_tokens > 100_000 and sh.num_docs == stats["kept"]
    first = json.loads(path.open(encoding="utf-8").readline())["text"]
    first_doc = decoded_docs(tiny_tokenizer, sh)[0]
    assert first_doc == StripBoilerplate().clean(normalize(first))
    assert "Creative Commons" in first and "Creative Commons" not in first_doc  # the licence line went
    assert stats["events"]["removed_licence_lines"] >= 1


def test_json_array_file(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"id": "a", "body": LONG_A}, {"id": "b", "body": LONG_B}]), encoding="utf-8")
    out = run(cfg_for(tmp_path, [{"name": "s", "paths": [str(path)], "text_field": "body"}]))
    assert read_corpus(out)[1]["s"].num_docs == 2
