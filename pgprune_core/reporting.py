"""How long-running work tells the user what it is doing.

Library code reports through a :class:`Reporter`; the default is silent, the CLI passes a
Rich implementation (``pgprune_core.cli.progress.RichReporter``) with progress bars.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Reporter(Protocol):
    def phase(self, text: str) -> None:
        """A new phase begins (loading the model, scoring units, ...)."""

    def message(self, text: str) -> None:
        """A line worth showing (a warning, where results were written)."""

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        """Iterate ``items`` with a progress bar."""

    def loop_start(self, total: int, description: str, completed: int = 0) -> None:
        """The optimisation loop (or a stage of it) starts."""

    def loop_update(self, step: int, stats: dict[str, Any]) -> None:
        """One optimisation step finished (``stats``: loss, baseline, kept, ...)."""

    def loop_end(self) -> None:
        """The loop (or stage) ended."""


class SilentReporter:
    """Reports nothing (library use, tests)."""

    def phase(self, text: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        return iter(items)

    def loop_start(self, total: int, description: str, completed: int = 0) -> None:
        pass

    def loop_update(self, step: int, stats: dict[str, Any]) -> None:
        pass

    def loop_end(self) -> None:
        pass
