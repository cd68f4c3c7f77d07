"""Where demo artefacts live, and whether what is there can be trusted.

The cache root is pgprune's (:func:`pgprune_core.data.cache.cache_root`: ``$PGPRUNE_CACHE``,
else ``$XDG_CACHE_HOME/pgprune``, else ``~/.cache/pgprune``).  An entry is a directory named after the recipe and the corpus hash
(``demo-llama-v1-<8 hex>``): another Python version has other help topics, hence another
corpus and another entry, so two virtual environments sharing a cache never rebuild each
other's model.

Entries are written whole (:func:`pgprune_core.run.artifacts.atomic_dir`) under an exclusive
lock, and an entry is trusted only when every file that ``PROVENANCE.json`` lists is present
with the sha256 it records: a truncated copy, a hand-edited weight file or a half-deleted
directory is rebuilt rather than loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROVENANCE = "PROVENANCE.json"
#: the format tag of ``PROVENANCE.json``; an entry with another tag is rebuilt
PROVENANCE_FORMAT = "pgprune-demo/1"
#: files an entry must list (and hold) to count as a loadable model
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def entry_name(recipe_name: str, corpus_sha256: str) -> str:
    return f"{recipe_name}-{corpus_sha256[:8]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file directly in ``directory`` except ``PROVENANCE.json``."""
    return {
        path.name: sha256_file(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != PROVENANCE
    }


def read_provenance(entry: Path) -> dict[str, Any] | None:
    """The entry's provenance if it is a complete, intact model directory, else ``None``."""
    try:
        provenance = json.loads((entry / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(provenance, dict) or provenance.get("format") != PROVENANCE_FORMAT:
        return None
    files = provenance.get("files")
    if not isinstance(files, dict) or not all(name in files for name in REQUIRED_FILES):
        return None
    for name, expected in files.items():
        path = entry / name
        if not path.is_file() or sha256_file(path) != expected:
            return None
    return provenance


@contextlib.contextmanager
def build_lock(root: Path, name: str) -> Iterator[bool]:
    """Hold an exclusive lock on ``root/.<name>.lock`` so that concurrent builders of one
    entry wait for each other instead of building it twice; yields whether it is held.

    Correctness does not depend on it (entries appear by rename, whole); it saves a
    redundant two-minute build.  Where ``fcntl`` does not exist (Windows) no lock is taken
    and ``False`` is yielded.
    """
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(root / f".{name}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_builds(root: Path, name: str) -> None:
    """Delete temporaries that a killed build of ``name`` left behind (``.<name>.*.tmp``
    and ``.old``).  Call it only while holding :func:`build_lock`: then no live build owns them."""
    for path in root.glob(f".{name}.*"):
        if path.is_dir() and path.suffix in (".tmp", ".old"):
            shutil.rmtree(path, ignore_errors=True)
