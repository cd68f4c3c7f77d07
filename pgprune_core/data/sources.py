"""Text corpora: the named ones of the paper (C4, WikiText-2) and local files.

Everything is read through the ``datasets`` library (``load_dataset``), so compressed
JSON lines, parquet and plain text behave exactly as they do elsewhere in the HF
ecosystem and are cached by it.  A :class:`TextSource` is cheap to build (nothing is read
until :meth:`TextSource.texts`) and carries a :attr:`~TextSource.fingerprint` that
identifies its content, which is what the token cache is keyed on.

The paper's protocol (Sect. 4.1): calibrate on C4 (the first shard of the ``en`` train
split), evaluate perplexity on the WikiText-2 raw test split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pgprune_core.config.sections import DataSection
from pgprune_core.errors import DataError, first_line

Role = Literal["calibration", "evaluation"]

#: the CLI flag that passes a local file for each role (named in error messages)
FILE_FLAG: dict[str, str] = {"calibration": "--calib-file", "evaluation": "--eval-file"}

#: file name endings -> ``datasets`` builder
FILE_BUILDERS: dict[str, str] = {
    ".txt": "text",
    ".raw": "text",
    ".txt.gz": "text",
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class HubSplit:
    """Which files and split of a hub dataset one role reads."""

    split: str
    data_files: str | None = None


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus users ask for by name; read from the Hugging Face hub."""

    name: str
    path: str
    config: str | None
    calibration: HubSplit
    evaluation: HubSplit
    text_field: str = "text"


CORPORA: dict[str, NamedCorpus] = {
    # allenai/c4 is one dataset of 1,024 train shards; the paper (like SparseGPT and
    # Wanda) calibrates on the first shard and evaluates on the first validation shard.
    "c4": NamedCorpus(
        name="c4",
        path="allenai/c4",
        config=None,
        calibration=HubSplit("train", "en/c4-train.00000-of-01024.json.gz"),
        evaluation=HubSplit("validation", "en/c4-validation.00000-of-00008.json.gz"),
    ),
    "wikitext2": NamedCorpus(
        name="wikitext2",
        path="Salesforce/wikitext",
        config="wikitext-2-raw-v1",
        calibration=HubSplit("train"),
        evaluation=HubSplit("test"),
    ),
}


def parse_slice(text: str | None) -> slice | None:
    """``"1800:2000"`` -> ``slice(1800, 2000)`` (Python slice syntax, steps allowed)."""
    if text is None or not text.strip():
        return None
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?", text)
    if match is None:
        raise DataError(f"document slice {text!r} is not Python slice syntax such as 1800:2000")
    start, stop, step = (int(part) if part else None for part in match.groups())
    if step == 0:
        raise DataError(f"document slice {text!r} has a step of 0")
    return slice(start, stop, step)


def file_builder(path: Path) -> str:
    """The ``datasets`` builder that reads ``path``, chosen by its file name ending."""
    name = path.name.lower()
    for ending in sorted(FILE_BUILDERS, key=len, reverse=True):
        if name.endswith(ending):
            return FILE_BUILDERS[ending]
    raise DataError(
        f"cannot read {path}: unknown file type; supported: {', '.join(FILE_BUILDERS)}"
    )


def file_stem(path: Path) -> str:
    """The name of an evaluation set read from ``path``: its name without the ending."""
    name = path.name
    for ending in sorted(FILE_BUILDERS, key=len, reverse=True):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide ``datasets``' own progress bars: library calls stay quiet, and the CLI shows
    pgprune's bars instead.  Restores the previous setting."""
    import datasets
    from datasets.utils import logging as ds_logging

    was_disabled = datasets.are_progress_bars_disabled()
    verbosity = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


class TextSource:
    """One corpus for one role: ``.name`` and ``.texts() -> list[str]`` (documents).

    ``builder`` is a ``datasets`` builder (``"json"``, ``"text"``, ``"parquet"``) or a
    hub dataset id; ``doc_slice`` selects documents (after loading, before tokenizing).
    Plain-text files give one document per line, as the ``text`` builder does.
    """

    def __init__(
        self,
        name: str,
        *,
        builder: str,
        role: Role,
        split: str = "train",
        config: str | None = None,
        data_files: str | None = None,
        text_field: str = "text",
        doc_slice: str | None = None,
        local_file: Path | None = None,
        hf_cache_dir: Path | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.name = name
        self.builder = builder
        self.role = role
        self.split = split
        self.config = config
        self.data_files = data_files
        # the text builder always names its column "text"
        self.text_field = "text" if builder == "text" else text_field
        self.doc_slice = doc_slice
        self.local_file = local_file
        self.hf_cache_dir = hf_cache_dir
        #: where the token cache for this source lives (None = the default cache root)
        self.cache_dir = cache_dir
        self._slice = parse_slice(doc_slice)
        self._texts: list[str] | None = None

    def __repr__(self) -> str:
        return f"TextSource({self.name!r}, {self.describe()})"

    def describe(self) -> str:
        """Where the text comes from, for messages and reports."""
        where = (
            f"file {self.local_file}"
            if self.local_file is not None
            else f"{self.path_label()} {self.split} split"
        )
        return where + (f" [{self.doc_slice}]" if self.doc_slice else "")

    def path_label(self) -> str:
        return self.builder + (f" ({self.config})" if self.config else "")

    def identity(self) -> dict[str, Any]:
        """Everything that determines the documents, for the cache key.  A local file
        is identified by its resolved path, size and modification time."""
        ident: dict[str, Any] = {
            "builder": self.builder,
            "config": self.config,
            "split": self.split,
            "data_files": self.data_files,
            "text_field": self.text_field,
            "slice": [self._slice.start, self._slice.stop, self._slice.step]
            if self._slice
            else None,
        }
        if self.local_file is not None:
            stat = self._stat()
            ident["file"] = {
                "path": str(self.local_file.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
        return ident

    @property
    def fingerprint(self) -> str:
        """A hash of :meth:`identity`; changes when the file or the selection changes."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def _stat(self) -> Any:
        assert self.local_file is not None
        try:
            return self.local_file.stat()
        except FileNotFoundError:
            raise DataError(f"{self.role} file not found: {self.local_file}") from None

    def texts(self) -> list[str]:
        """The documents, loaded on first call and kept."""
        if self._texts is None:
            self._texts = self._read()
        return self._texts

    def _read(self) -> list[str]:
        dataset = self._load()
        if self.text_field not in dataset.column_names:
            raise DataError(
                f"{self.describe()} has no field {self.text_field!r}; its fields are "
                f"{', '.join(dataset.column_names)} (set data.text_field)"
            )
        n_docs = len(dataset)
        if self._slice is not None:
            selected = range(n_docs)[self._slice]
            if len(selected) == 0:
                raise DataError(
                    f"document slice {self.doc_slice} selects none of the {n_docs:,} "
                    f"documents of {self.describe()}"
                )
            dataset = dataset.select(selected)
        texts = list(dataset[self.text_field])
        wrong = next((t for t in texts if not isinstance(t, str)), None)
        if wrong is not None:
            raise DataError(
                f"field {self.text_field!r} of {self.describe()} holds "
                f"{type(wrong).__name__} values, not text"
            )
        if not any(t.strip() for t in texts):
            raise DataError(f"{self.describe()} holds no text ({len(texts):,} empty documents)")
        return texts

    def load_arguments(self) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The ``datasets.load_dataset`` call that reads this source.  Files are mapped to
        the split by name (``{"validation": ...}``): a bare file list would become "train"."""
        kwargs: dict[str, Any] = {"split": self.split}
        if self.data_files is not None:
            kwargs["data_files"] = {self.split: self.data_files}
        if self.hf_cache_dir is not None:
            kwargs["cache_dir"] = str(self.hf_cache_dir)
        if self.builder == "text":
            kwargs["sample_by"] = "line"
        args = (self.builder, self.config) if self.config else (self.builder,)
        return args, kwargs

    def _load(self) -> Any:
        import datasets
        from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

        args, kwargs = self.load_arguments()
        if self.local_file is not None:
            self._stat()
        try:
            with _quiet_datasets():
                return datasets.load_dataset(*args, **kwargs)
        except (ConnectionError, DatasetNotFoundError) as exc:
            if self.local_file is not None:
                raise
            reason = first_line(exc)
            raise DataError(
                f"could not load {self.name} ({self.path_label()}) from the Hugging Face hub "
                f"({reason}); pass a local file with {FILE_FLAG[self.role]} PATH "
                f"(.txt, .jsonl[.gz], .json, .parquet)"
            ) from None
        except DatasetGenerationError as exc:
            cause = exc.__cause__ or exc
            first = first_line(cause)
            raise DataError(f"could not read {self.describe()}: {first}") from None


def named_source(name: str, role: Role, data: DataSection, doc_slice: str | None = None) -> TextSource:
    """The named corpus ``name`` (``c4``, ``wikitext2``) for ``role``."""
    corpus = CORPORA.get(name)
    if corpus is None:
        raise DataError(
            f"unknown corpus {name!r}; known corpora: {', '.join(sorted(CORPORA))} "
            f"(or pass a local file with {FILE_FLAG[role]})"
        )
    split = corpus.calibration if role == "calibration" else corpus.evaluation
    return TextSource(
        name,
        builder=corpus.path,
        role=role,
        split=split.split,
        config=corpus.config,
        data_files=split.data_files,
        text_field=corpus.text_field,
        doc_slice=doc_slice,
        hf_cache_dir=_hf_cache(data),
        cache_dir=data.cache_dir,
    )


def file_source(
    path: str | Path, role: Role, data: DataSection, *, name: str | None = None,
    doc_slice: str | None = None,
) -> TextSource:
    """A local file for ``role``; named after its file stem unless ``name`` is given."""
    file = Path(path).expanduser()
    builder = file_builder(file)
    if not file.is_file():
        raise DataError(f"{role} file not found: {file}")
    return TextSource(
        name or file_stem(file),
        builder=builder,
        role=role,
        data_files=str(file.resolve()),
        text_field=data.text_field,
        doc_slice=doc_slice,
        local_file=file,
        hf_cache_dir=_hf_cache(data),
        cache_dir=data.cache_dir,
    )


def _hf_cache(data: DataSection) -> Path | None:
    """``datasets``' own cache: under ``data.cache_dir`` when one is configured (so that a
    run with an explicit cache writes nowhere else), else the HF default."""
    return Path(data.cache_dir).expanduser() / "datasets" if data.cache_dir else None


def calibration_source(data: DataSection) -> TextSource:
    """The calibration corpus: ``data.calib_file`` if set, else the named ``data.calib``;
    ``data.calib_slice`` selects documents of either."""
    if data.calib_file:
        return file_source(data.calib_file, "calibration", data, doc_slice=data.calib_slice)
    if not data.calib:
        raise DataError("no calibration data: set --calib (c4, wikitext2) or --calib-file PATH")
    return named_source(data.calib, "calibration", data, doc_slice=data.calib_slice)


def eval_sources(data: DataSection) -> dict[str, TextSource]:
    """Evaluation corpora by set name: the named ones of ``data.eval`` and one per file of
    ``data.eval_files`` (named after the file stem).  Nothing is read yet."""
    sources: dict[str, TextSource] = {}
    entries: list[tuple[str, TextSource]] = [
        (name, named_source(name, "evaluation", data)) for name in data.eval
    ]
    entries += [(src.name, src) for src in (file_source(f, "evaluation", data) for f in data.eval_files)]
    for name, source in entries:
        if name in sources:
            raise DataError(
                f"two evaluation sets are named {name!r} ({sources[name].describe()} and "
                f"{source.describe()}); rename one of the files"
            )
        sources[name] = source
    return sources
