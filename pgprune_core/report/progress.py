"""How long-running work tells the user what it is doing.

Library code reports through a :class:`Reporter`; the default (:class:`SilentReporter`) says
nothing, the CLI and the demo pass :class:`RichReporter`, with progress bars on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pgprune_core.report.console import err_console

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


def _progress(*extra: Any) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


class RichReporter:
    """Progress on stderr, so that ``--json`` output on stdout stays clean."""

    def __init__(self) -> None:
        self._loop: Progress | None = None
        self._task: TaskID | None = None

    def phase(self, text: str) -> None:
        err_console.print(f"[cyan]•[/] {text}", highlight=False)

    def message(self, text: str) -> None:
        err_console.print(text, highlight=False)

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        with _progress() as progress:
            task = progress.add_task(description, total=total, rate="")
            for item in items:
                yield item
                progress.advance(task)
                speed = progress.tasks[0].speed
                progress.update(task, rate=f"{speed:.2f} it/s" if speed else "")

    def loop_start(self, total: int, description: str, completed: int = 0) -> None:
        self._loop = _progress(TextColumn("{task.fields[stats]}"))
        self._loop.start()
        self._task = self._loop.add_task(description, total=total, completed=completed,
                                         rate="", stats="")

    def loop_update(self, step: int, stats: dict[str, Any]) -> None:
        if self._loop is None or self._task is None:
            return
        loss = stats.get("loss")
        parts = [f"loss {loss:.4f}" if loss is not None else "loss nan (skipped)"]
        if stats.get("baseline") is not None:
            parts.append(f"baseline {stats['baseline']:.4f}")
        if stats.get("expected_kept") is not None:
            parts.append(f"kept {stats['expected_kept']:.3f}")
        if stats.get("lr") is not None:
            parts.append(f"lr {stats['lr']:.2e}")
        self._loop.update(self._task, completed=step, stats="  ".join(parts))
        speed = self._loop.tasks[0].speed
        self._loop.update(self._task, rate=f"{speed:.2f} steps/s" if speed else "")

    def loop_end(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        self._loop, self._task = None, None
