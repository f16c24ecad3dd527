"""pmcllama's format readers as datatrove readers, for datatrove pipelines of your own.

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.writers import JsonlWriter
    from pmcllama.data.datatrove_readers import JatsReader

    LocalPipelineExecutor([JatsReader("pmc/oa_comm/"), JsonlWriter("pmc_text/")], tasks=8).run()

`JatsReader` (PubMed Central full text: `.nxml`/`.xml` articles and `.tar.gz` packages),
`MedlineReader` (PubMed citation XML, gzipped or not), `S2orcReader` (S2ORC JSONL, both
release layouts), `TextbookReader` (`.txt`/`.md`/`.pdf` books cleaned of page furniture) and
`PmcllamaReader(folder, format=...)` for any format of the corpus stage (`pmcllama.data.readers`).

The parsing is the corpus stage's own (`read_file`), so a document has the same text, id
and metadata here as in `pmcllama corpus`: its metadata holds the source name, `file_path`,
`line` and what the format gives (pmcid, pmid, doi, journal, year, mesh, ...). Like the stage,
a reader lists its folder (sorted), reads the files of its format and counts the others
(`skipped_<reason>` in the step's stats: `other_format`, `other_xml`, `not_data`); each task
(rank) gets every `world_size`-th input, and an S2ORC 2020 metadata shard and its pdf_parses
shard are one input, so they are always read by the same task.

A record that cannot be read (malformed XML, a line that is not JSON, bytes that are not
UTF-8) raises a `UserError` naming the file and line under `on_error="stop"`; under "skip"
(the default) it is dropped and counted (`dropped_<reason>`). A record that is read but not
wanted (a citation without an abstract, a paper without a PMC id) is always dropped and
counted. Dropped records go to `exclusion_writer` when one is given, with the reason in
`metadata["filter_reason"]` (datatrove's filters use the same key) and what is wrong in
`metadata["filter_detail"]`.

A folder on a remote file system (s3://, hf://, ...: anything fsspec opens) is listed there,
and each input is copied to a temporary folder for its parse and deleted after it; the
documents name the remote file. There the format must be given (a remote `.xml` file is not
opened to tell JATS from MEDLINE, so `format="auto"` is refused).
"""
from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from datatrove.data import Document as DatatroveDocument, DocumentsPipeline
from datatrove.io import DataFolderLike
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers.disk_base import DiskWriter
from tqdm import tqdm

from pmcllama.data.corpus_config import CorpusSource
from pmcllama.data.document import Document, InputFile, stop_error
from pmcllama.data.readers import SUFFIXES, classify, read_file
from pmcllama.data.s2orc import pair_shards
from pmcllama.errors import UserError


class PmcllamaReader(BaseDiskReader):
    """datatrove reader of `data_folder` in one of the corpus stage's formats (see the module)."""

    name = "pmcllama"
    format = "auto"

    def __init__(self, data_folder: DataFolderLike, *, format: str | None = None, source: str | None = None,
                 on_error: str = "skip", exclusion_writer: DiskWriter | None = None,
                 keep_captions: bool = False, require_pmcid: bool = True, text_field: str = "text",
                 split_paragraphs: bool = False, glob_pattern: str | None = None, recursive: bool = True,
                 limit: int = -1, skip: int = 0, file_progress: bool = False, doc_progress: bool = False,
                 default_metadata: dict | None = None) -> None:
        super().__init__(data_folder, limit=limit, skip=skip, file_progress=file_progress,
                         doc_progress=doc_progress, default_metadata=default_metadata, recursive=recursive,
                         glob_pattern=glob_pattern)
        self.format = format or self.format
        if self.format not in SUFFIXES and self.format != "auto":
            raise ValueError(f"unknown format '{self.format}' (one of auto, {', '.join(SUFFIXES)})")
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', not '{on_error}'")
        if self.format == "auto" and not self.data_folder.is_local():
            raise ValueError(f"{self.data_folder.path}: a remote folder needs the format "
                             f"(one of {', '.join(SUFFIXES)}), not auto")
        # the options as a corpus source's (built unvalidated: any source name may be given here)
        self.options = CorpusSource.model_construct(
            name=source or (self.format if self.format != "auto" else "corpus"), paths=[self.data_folder.path],
            format=self.format, text_field=text_field, split_paragraphs=split_paragraphs,
            keep_captions=keep_captions, require_pmcid=require_pmcid)
        self.on_error, self.exclusion_writer = on_error, exclusion_writer

    def inputs(self) -> tuple[list[InputFile], list[str]]:
        """(every input of the folder, in order; the reason code of each file not read)."""
        found, skipped = [], []
        for rel in self.data_folder.list_files(recursive=self.recursive, glob_pattern=self.glob_pattern):
            if any(part.startswith(".") for part in Path(rel).parts):
                continue
            inp, reason, _ = classify(self._path(rel), self.format, self.data_folder.path)
            if inp is None:
                skipped.append(reason)
            else:
                found.append(inp)
        return (pair_shards(found) if self.format == "s2orc" else found), skipped

    def read_file(self, filepath: str) -> DocumentsPipeline:
        """The documents of one file of the folder (a path relative to it)."""
        inp, reason, detail = classify(self._path(filepath), self.format, self.data_folder.path)
        if inp is None:
            raise UserError(f"not read by this reader ({reason}): {detail}", filepath)
        yield from self._documents(inp)

    def _path(self, rel: str) -> Path:
        """A file of the folder as the format readers see it: local, or its name in the folder."""
        return Path(self.data_folder.resolve_paths(rel)) if self.data_folder.is_local() else Path(rel)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        inputs, skipped_files = self.inputs()
        for reason in skipped_files[rank::world_size]:  # each counted by one task
            self.stat_update(f"skipped_{reason}")
        shard = inputs[rank::world_size]
        kept = skipped = 0
        with self.exclusion_writer or contextlib.nullcontext() as excluded, \
                tqdm(total=len(shard), desc="Files", unit="file", disable=not self.file_progress) as bar:
            for inp in shard:
                self.stat_update("input_files")
                n = 0
                for doc in self._documents(inp, excluded, rank):
                    if skipped < self.skip:
                        skipped += 1
                        continue
                    if self.limit != -1 and kept >= self.limit:
                        break
                    self.update_doc_stats(doc)
                    kept, n = kept + 1, n + 1
                    yield doc
                bar.update()
                self.stat_update("documents", value=n, unit="input_file")
                if self.limit != -1 and kept >= self.limit:
                    break

    def _documents(self, inp: InputFile, excluded: DiskWriter | None = None,
                   rank: int = 0) -> Iterator[DatatroveDocument]:
        events: Counter = Counter()
        with self._local(inp) as (local, names):
            for doc in read_file(local, self.options, events):
                doc.file = names.get(doc.file, doc.file)
                doc.id = next((doc.id.replace(k, v) for k, v in names.items() if doc.id.startswith(k)), doc.id)
                reason = doc.error or doc.drop
                if doc.error and self.on_error == "stop":
                    raise stop_error(doc)
                if reason:
                    self.stat_update(f"dropped_{reason}")
                    if excluded is not None:
                        excluded.write(self._datatrove(doc, filter_reason=reason, filter_detail=doc.detail), rank)
                    continue
                yield self._datatrove(doc)
        for event, count in events.items():
            if count:
                self.stat_update(event, value=count)

    @contextlib.contextmanager
    def _local(self, inp: InputFile):
        """(the input with local paths, {local path: the name documents give}): a remote input's
        files are copied to a temporary folder, removed after the parse."""
        if self.data_folder.is_local():
            yield inp, {}
            return
        with tempfile.TemporaryDirectory(prefix="pmcllama-read-") as tmp:
            names = {}
            for k, rel in enumerate(inp.paths()):
                local = Path(tmp) / str(k) / rel.name  # keeps the name: the format readers go by its suffix
                local.parent.mkdir()
                self.data_folder.get_file(str(rel), str(local))
                names[str(local)] = self.data_folder.resolve_paths(str(rel))
            paired = Path(tmp) / "1" / inp.paired.name if inp.paired is not None else None
            yield replace(inp, path=Path(tmp) / "0" / inp.path.name, paired=paired), names

    def _datatrove(self, doc: Document, **extra) -> DatatroveDocument:
        meta = {**(self.default_metadata or {}), "source": doc.source, "file_path": doc.file, "line": doc.line,
                **doc.metadata, **extra}
        return DatatroveDocument(text=doc.text, id=doc.id, metadata=meta)


class JatsReader(PmcllamaReader):
    """PubMed Central full text (JATS `.nxml`/`.xml` articles, `.tar.gz` packages of them)."""

    name = "pmcllama JATS"
    format = "jats"


class MedlineReader(PmcllamaReader):
    """PubMed/MEDLINE citation XML (`.xml`, `.xml.gz`): title and abstract of each citation."""

    name = "pmcllama MEDLINE"
    format = "medline"


class S2orcReader(PmcllamaReader):
    """S2ORC JSONL, the 2019 layout (one row a paper) and the 2020 one (metadata and pdf_parses
    shards, each pair read together); papers without a PMC id are dropped unless
    `require_pmcid=False`."""

    name = "pmcllama S2ORC"
    format = "s2orc"


class TextbookReader(PmcllamaReader):
    """Books as `.txt`, `.md` or `.pdf`: running headers, footers and back matter removed."""

    name = "pmcllama textbook"
    format = "textbook"
