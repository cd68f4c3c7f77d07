"""Exceptions that mean "the user asked for something we cannot do".

The CLI turns every :class:`PgpruneError` into one line on stderr and exit status 2, so
raise these (never bare ``ValueError``) for mistakes a user can fix: an unknown plugin, an
out-of-range rate, a missing file.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, candidates: Iterable[str], quote: str = "'") -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


class PgpruneError(Exception):
    """A user-facing error: its message is printed as one line, without a traceback."""

    exit_code: int = 2


class ConfigError(PgpruneError):
    """An invalid configuration value, key or combination of options."""


class PluginError(PgpruneError):
    """A plugin could not be found, loaded or registered."""


class UnknownPluginError(PluginError):
    """A plugin name that no loaded plugin registered."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        choices = ", ".join(sorted(valid)) if valid else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, valid)}; "
                         f"valid {kind}s: {choices}")
        self.kind, self.name, self.valid = kind, name, valid


class MissingPluginError(PluginError):
    """A plugin of this project's own family that is not installed (a framework-only
    install): the message names the distribution that provides it."""

    def __init__(self, kind: str, name: str, distribution: str) -> None:
        super().__init__(
            f"{kind} {name!r} is not installed: it ships in the distribution {distribution} "
            f"(pip install {distribution}; `pip install pgprune` installs the default plugins, "
            f"`pip install 'pgprune[all]'` all of them)"
        )
        self.kind, self.name, self.distribution = kind, name, distribution


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name for the same kind."""


class ModelError(PgpruneError):
    """A model that cannot be loaded, is not supported, or is corrupt on disk."""


class ExportError(ModelError):
    """A model that the requested export format cannot express (or a target that exists)."""


class DataError(PgpruneError):
    """A corpus that cannot be loaded or is too small for what was asked."""


class RunDirError(PgpruneError):
    """A run directory that is missing, foreign, incomplete or corrupt."""


class Interrupted(PgpruneError):
    """A run stopped by SIGINT/SIGTERM after writing a checkpoint (resumable)."""

    exit_code = 130


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name when it has none):
    what a one-line error quotes of a library's multi-line exception."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class DistributedError(PgpruneError):
    """A multi-process run that cannot start (a bad launch) or lost one of its processes."""


class EchoedError(PgpruneError):
    """The error that rank 0 of a ``torchrun`` launch stopped on, as the other ranks see it:
    they exit with its status, and only rank 0 prints it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
