"""Atomic writes: a reader (or a resumed run) never sees a half-written file.

Every writer puts the content into a temporary file in the *same directory* as the target
and ``os.replace`` s it over the target.  A rename within one file system is atomic, so a
process killed mid-write leaves either the old file or the new one, plus at worst a
``.<name>.*.tmp`` file that the next successful write does not care about.  The temporary
lives beside the target (not in ``/tmp``) because a rename across file systems is a copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """What ``open()`` would give a new file (0o644 under the usual umask); ``mkstemp``
    makes its files 0o600, which would leave a run's outputs unreadable to others."""
    return 0o666 & ~_umask()


def _dir_mode() -> int:
    """What ``mkdir`` would give a new directory (0o755 under the usual umask)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    For writers that want a file name rather than bytes (``torch.save``,
    ``safetensors.torch.save_file``, ``numpy.save``)::

        with atomic_path(run_dir / "policy.pt") as tmp:
            torch.save(state, tmp)

    The data are flushed to disk before the rename.  On an exception the temporary is
    removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically; returns ``path``.

    Non-finite floats are written as ``NaN``/``Infinity`` (Python's ``json`` reads them
    back); a diverged run's perplexity should stay visible rather than become ``null``.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it becomes ``path``.

    Used for multi-file artefacts (a saved model directory) so that ``path`` is either
    absent, the previous complete version, or the new complete version.  An existing
    ``path`` is moved aside, the new directory renamed into place, then the old one
    deleted: the swap itself is two renames, not one, so a crash between them leaves the
    old version under ``.<name>.*.old`` rather than at ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # mkdtemp makes 0o700, and some writers (transformers' shards) 0o600 files
    file_mode, dir_mode = _file_mode(), _dir_mode()
    for root, dirs, files in os.walk(tmp):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)
    os.chmod(tmp, dir_mode)
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
