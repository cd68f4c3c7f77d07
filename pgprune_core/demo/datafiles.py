"""The demo run's calibration and evaluation texts, as files in the cache.

``pgprune run`` without ``--model`` cannot download C4 or WikiText-2, so it calibrates on
the calibration topics and measures perplexity on the evaluation topics of
:mod:`pgprune_core.demo.corpus`: the same kind of text the model was trained on, but
topics it never saw.

The files are JSON lines, one ``{"topic": ..., "text": ...}`` record per help topic, not
plain ``.txt``: pgprune reads a ``.txt`` file one *line* per document (the ``datasets``
``text`` builder), which would cut every topic at each newline, put an end-of-sequence
token after every line of the calibration stream and double every newline of the
evaluation stream (documents are joined with a blank line).  With one record per topic, a
document is a topic, as in training.
"""

from __future__ import annotations

import json
from pathlib import Path

from pgprune_core.data.cache import cache_root
from pgprune_core.demo.corpus import CorpusSplit, Part, demo_corpus
from pgprune_core.run.artifacts import atomic_write_text

#: file names; the evaluation set is reported under the file's stem ("pydoc-eval")
CALIBRATION_FILE = "pydoc-calib.jsonl"
EVALUATION_FILE = "pydoc-eval.jsonl"


def jsonl(corpus: CorpusSplit, part: Part) -> str:
    """One part as JSON lines: a record per topic, in key order."""
    return "".join(
        json.dumps({"topic": key, "text": corpus.topics[key]}, ensure_ascii=False) + "\n"
        for key in corpus.parts[part]
    )


def demo_data(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(calibration file, evaluation file)``, written into the cache on first use (and
    rewritten if their content no longer matches the corpus)."""
    corpus = demo_corpus()
    directory = cache_root(cache_dir) / f"demo-data-v1-{corpus.sha256[:8]}"
    files: tuple[tuple[str, Part], ...] = (
        (CALIBRATION_FILE, "calibration"), (EVALUATION_FILE, "evaluation"),
    )
    paths = []
    for name, part in files:
        path = directory / name
        content = jsonl(corpus, part)
        try:
            current = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != content:
            atomic_write_text(path, content)
        paths.append(path)
    return paths[0], paths[1]
