"""UMLS Metathesaurus release files (RRF) as a knowledge source.

A UMLS folder (the `META` folder of a release, licence required) holds pipe-separated files,
every row ending in a pipe; the columns (UMLS Reference Manual, section 3.3):
- MRCONSO.RRF (18): CUI|LAT|TS|LUI|STT|SUI|ISPREF|AUI|SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF
- MRDEF.RRF    (8): CUI|AUI|ATUI|SATUI|SAB|DEF|SUPPRESS|CVF
- MRREL.RRF   (16): CUI1|AUI1|STYPE1|REL|CUI2|AUI2|STYPE2|RELA|RUI|SRUI|SAB|SL|RG|DIR|SUPPRESS|CVF
- MRSTY.RRF    (6): CUI|TUI|STN|STY|ATUI|CVF
MRCONSO and MRDEF are required, MRREL and MRSTY used when present; each may be gzipped (.RRF.gz).

The files are read streaming, one line at a time (real releases are gigabytes), in four passes
that keep in memory only what the prompts need: the concepts with an English definition (from
`vocabularies` when given, in that order of preference), their relations, the names of the
concepts they point to, and semantic types. A concept's name is its UMLS preferred English
name (LAT=ENG, TS=P, STT=PF, ISPREF=Y); other English strings are synonyms (at most 5).
Suppressed rows (SUPPRESS O, E or Y) are ignored.

MRREL's REL and RELA give the relation of the second concept to the first ("CUI2 REL CUI1"):
- PAR / CHD: CUI2 is a parent / child of CUI1 -> the is_a hierarchy ("<A> is a kind of <b>"),
  unless RELA names another relation (part_of, ...), which is then worded as below;
- RB / RN: CUI2 is broader / narrower than CUI1 -> "<A> is a narrower concept than <b>";
- RO with a RELA: "<CUI2> <RELA in English> <CUI1>" ("may_treat" -> "Metformin may treat
  type 2 diabetes mellitus."); RO without RELA says nothing worth a prompt and is left out.
At most `max_relations` relations per concept (besides the hierarchy) are kept.

A row with the wrong number of columns, or a first column that is not a CUI, goes to
`reject(path, line, reason, raw)`: the caller stops with an error naming file and line, or
sets the row aside (instructions' `on_error`).
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pmcllama.errors import UserError
from pmcllama.knowledge.obo import Term
from pmcllama.knowledge.graph import Ontology, link
from pmcllama.progress import progress

COLUMNS = {
    "MRCONSO": "CUI|LAT|TS|LUI|STT|SUI|ISPREF|AUI|SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF",
    "MRDEF": "CUI|AUI|ATUI|SATUI|SAB|DEF|SUPPRESS|CVF",
    "MRREL": "CUI1|AUI1|STYPE1|REL|CUI2|AUI2|STYPE2|RELA|RUI|SRUI|SAB|SL|RG|DIR|SUPPRESS|CVF",
    "MRSTY": "CUI|TUI|STN|STY|ATUI|CVF",
}
REQUIRED = ("MRCONSO", "MRDEF")
SUPPRESSED = {"O", "E", "Y"}
HIERARCHY = {"PAR", "CHD"}
_CUI = re.compile(r"^C\d{7}$")
_TAG = re.compile(r"<[^>]+>")
Reject = Callable[[Path, int, str, str], None]


def _raise(path: Path, line: int, reason: str, raw: str) -> None:
    raise UserError(reason, path, line)


def rrf_file(folder: Path, table: str) -> Path | None:
    for name in (f"{table}.RRF", f"{table}.RRF.gz", f"{table.lower()}.rrf"):
        if (folder / name).is_file():
            return folder / name
    return None


def umls_files(folder: str | Path) -> list[Path]:
    """The RRF files of a UMLS folder (UserError when a required one is missing)."""
    folder = Path(folder)
    found = []
    for table in COLUMNS:
        path = rrf_file(folder, table)
        if path is None and table in REQUIRED:
            raise UserError(f"not a UMLS release folder: {table}.RRF is missing", folder)
        if path is not None:
            found.append(path)
    return found


def is_umls_folder(name: str | Path) -> bool:
    return Path(name).is_dir() and rrf_file(Path(name), "MRCONSO") is not None


def rrf_rows(path: Path, table: str, reject: Reject = _raise) -> Iterator[list[str]]:
    """Fields of every row of an RRF file (the trailing empty field dropped)."""
    n = COLUMNS[table].count("|") + 1
    opener = gzip.open if path.suffix == ".gz" else open
    size = path.stat().st_size
    with opener(path, "rb") as f, progress(total=size, unit="B", unit_scale=True, desc=path.name,
                                           disable=size < 1 << 26) as bar:
        done = 0
        for lineno, raw in enumerate(f, 1):
            done += len(raw)
            if lineno % 100_000 == 0:
                bar.update(done)
                done = 0
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                reject(path, lineno, f"not valid UTF-8: {e.reason}", raw[:300].decode("utf-8", "replace"))
                continue
            if not line:
                continue
            fields = line.split("|")
            if len(fields) != n + 1 or fields[-1] != "":
                got = len(fields) - 1 if fields[-1] == "" else len(fields)
                reason = (f"{got} columns, expected {n} ({table}: {COLUMNS[table]}|)" if got != n
                          else "the row does not end with '|' (every RRF row does)")
                reject(path, lineno, reason, line[:1000])
                continue
            if not _CUI.match(fields[0]):
                reject(path, lineno, f"first column {fields[0][:20]!r} is not a CUI (C + 7 digits)", line[:1000])
                continue
            yield fields[:-1]
        bar.update(done)


def read_definitions(path: Path, vocabularies: list[str], reject: Reject) -> dict[str, str]:
    """CUI -> definition (the first of the most preferred vocabulary)."""
    rank = {sab: i for i, sab in enumerate(vocabularies)}
    best: dict[str, tuple[int, str]] = {}
    for cui, _aui, _atui, _satui, sab, text, suppress, _cvf in rrf_rows(path, "MRDEF", reject):
        if suppress in SUPPRESSED or (rank and sab not in rank):
            continue
        text = " ".join(_TAG.sub(" ", text).split())
        r = rank.get(sab, 0)
        if text and (cui not in best or r < best[cui][0]):
            best[cui] = (r, text)
    return {cui: text for cui, (_, text) in best.items()}


def read_relations(path: Path, core: set[str], vocabularies: list[str], reject: Reject, max_relations: int
                   ) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, str]]]]:
    """(parents by CUI, [(relation, target CUI)] by CUI) for relations touching `core` concepts."""
    sabs = set(vocabularies)
    parents: dict[str, set[str]] = {}
    relations: dict[str, list[tuple[str, str]]] = {}
    for row in rrf_rows(path, "MRREL", reject):
        cui1, rel, cui2, rela, sab, suppress = row[0], row[3], row[4], row[7], row[10], row[14]
        if cui1 == cui2 or suppress in SUPPRESSED or (sabs and sab not in sabs):
            continue
        if rel in HIERARCHY and rela in ("", "isa", "inverse_isa"):
            child, parent = (cui1, cui2) if rel == "PAR" else (cui2, cui1)
            if child in core or parent in core:
                parents.setdefault(child, set()).add(parent)
            continue
        if rel in ("RB", "RN") and not rela:
            subject, rela, obj = (cui1, "narrower_than", cui2) if rel == "RB" else (cui2, "narrower_than", cui1)
        elif rela and rel in ("RO", "RB", "RN", *HIERARCHY):
            subject, obj = cui2, cui1
        else:
            continue
        if subject in core:
            links = relations.setdefault(subject, [])
            if len(links) < max_relations and (rela, obj) not in links:
                links.append((rela, obj))
    return parents, relations


def read_names(path: Path, needed: set[str], reject: Reject) -> dict[str, tuple[str, list[str]]]:
    """CUI -> (preferred English name, up to 5 other English strings)."""
    names: dict[str, str] = {}
    others: dict[str, list[str]] = {}
    for row in rrf_rows(path, "MRCONSO", reject):
        cui, lat, ts, stt, ispref, text, suppress = row[0], row[1], row[2], row[4], row[6], row[14], row[16]
        if lat != "ENG" or cui not in needed or suppress in SUPPRESSED or not text.strip():
            continue
        if ts == "P" and stt == "PF" and ispref == "Y" and cui not in names:
            names[cui] = text.strip()
        else:
            seen = others.setdefault(cui, [])
            if len(seen) < 12 and text.strip() not in seen:
                seen.append(text.strip())
    out = {}
    for cui, name in names.items():
        syns, taken = [], {name.lower()}
        for s in others.get(cui, []):
            if s.lower() not in taken and len(syns) < 5:
                syns.append(s)
                taken.add(s.lower())
        out[cui] = (name, syns)
    return out


def read_semantic_types(path: Path, cuis: set[str], reject: Reject) -> dict[str, list[str]]:
    types: dict[str, list[str]] = {}
    for cui, _tui, _stn, sty, _atui, _cvf in rrf_rows(path, "MRSTY", reject):
        if cui in cuis and sty not in types.setdefault(cui, []):
            types[cui].append(sty)
    return types


@dataclass
class UMLS(Ontology):
    """UMLS concepts: the description adds the semantic type(s)."""

    semantic_types: dict[str, list[str]] = field(default_factory=dict)

    def describe(self, term: Term) -> str | None:
        answer = super().describe(term)
        types = self.semantic_types.get(term.id)
        if answer and types:
            answer += f" Its UMLS semantic type is {' and '.join(t.lower() for t in types)}."
        return answer


def load_umls(folder: str | Path, vocabularies: list[str] | None = None, reject: Reject | None = None,
              max_relations: int = 10) -> UMLS:
    """The concepts of a UMLS folder that have an English name and definition, with the names
    of the concepts they relate to (see the module doc)."""
    folder, vocabularies, reject = Path(folder), list(vocabularies or []), reject or _raise
    umls_files(folder)  # the required files exist
    defs = read_definitions(rrf_file(folder, "MRDEF"), vocabularies, reject)
    core = set(defs)
    parents, relations = {}, {}
    if rrf_file(folder, "MRREL") is not None:
        parents, relations = read_relations(rrf_file(folder, "MRREL"), core, vocabularies, reject, max_relations)
    needed = core | {p for ps in parents.values() for p in ps} | {o for rs in relations.values() for _, o in rs}
    needed |= set(parents)
    names = read_names(rrf_file(folder, "MRCONSO"), needed, reject)
    types = read_semantic_types(rrf_file(folder, "MRSTY"), set(names), reject) \
        if rrf_file(folder, "MRSTY") is not None else {}
    terms: dict[str, Term] = {}
    for cui, (name, syns) in sorted(names.items()):
        terms[cui] = Term(id=cui, name=name, definition=defs.get(cui, ""), synonyms=syns,
                          parents=sorted(p for p in parents.get(cui, ()) if p in names),
                          relations=[(r, o) for r, o in relations.get(cui, []) if o in names],
                          kind=(types.get(cui) or [""])[0])
    children, _ = link(terms)
    return UMLS(terms=terms, children=children, source=str(folder), semantic_types=types)
