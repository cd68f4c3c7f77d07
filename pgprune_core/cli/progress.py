"""Rich progress bars and phase lines for the CLI's long loops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .console import err_console

T = TypeVar("T")


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
        parts.append(f"kept {stats['expected_kept']:.3f}")
        self._loop.update(self._task, completed=step, stats="  ".join(parts))
        speed = self._loop.tasks[0].speed
        self._loop.update(self._task, rate=f"{speed:.2f} steps/s" if speed else "")

    def loop_end(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        self._loop, self._task = None, None
