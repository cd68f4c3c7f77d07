"""Calibration and evaluation data: corpora, cached token streams, calibration batches.

What the run pipeline calls::

    source = calibration_source(config.data)                 # TextSource
    stream = calibration_stream(config.data, tokenizer, batch_size=8, seed=0)
    stream.batch(position)                                   # int64 [8, seq_len]
    sets = eval_sources(config.data)                         # {"wikitext2": TextSource}

Modules: :mod:`.sources` (named corpora and local files, read through ``datasets``),
:mod:`.tokens` (token streams and their disk cache), :mod:`.stream` (the seeded,
position-addressable :class:`CalibrationStream`), :mod:`.cache` (the cache root).
"""

from __future__ import annotations

from typing import Any

from pgprune_core.config.sections import DataSection
from pgprune_core.data.cache import cache_root
from pgprune_core.data.sources import CORPORA, TextSource, calibration_source, eval_sources
from pgprune_core.data.stream import CalibrationStream
from pgprune_core.data.tokens import EVAL_SEPARATOR, tokenize_source, tokenizer_fingerprint
from pgprune_core.report.progress import Reporter

__all__ = [
    "CORPORA",
    "EVAL_SEPARATOR",
    "CalibrationStream",
    "TextSource",
    "cache_root",
    "calibration_source",
    "calibration_stream",
    "eval_sources",
    "tokenize_source",
    "tokenizer_fingerprint",
]


def calibration_stream(
    data: DataSection,
    tokenizer: Any,
    *,
    batch_size: int,
    seed: int,
    n_segments: int | None = None,
    reporter: Reporter | None = None,
) -> CalibrationStream:
    """The calibration corpus of ``data``, tokenized (cached) and cut into segments.

    ``n_segments`` overrides ``data.n_segments`` (the pipeline passes steps x batch size
    when the config leaves it open); both None = every non-overlapping window once.
    """
    source = calibration_source(data)
    tokens = tokenize_source(source, tokenizer, joining="eos", reporter=reporter)
    return CalibrationStream(
        tokens,
        seq_len=data.seq_len,
        batch_size=batch_size,
        n_segments=n_segments if n_segments is not None else data.n_segments,
        seed=seed,
        sampling=data.sampling,
        name=f"calibration text ({source.describe()})",
    )
