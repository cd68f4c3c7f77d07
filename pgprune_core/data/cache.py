"""Where pgprune keeps derived data (tokenized corpora) between runs.

Tokenizing a C4 shard takes minutes and is the same for every run with the same corpus
and tokenizer, so it is done once and kept under a cache root:
``DataSection.cache_dir`` if set, else ``$PGPRUNE_CACHE``, else
``$XDG_CACHE_HOME/pgprune``, else ``~/.cache/pgprune``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PGPRUNE_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The directory pgprune caches into (not created here)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pgprune"
