"""``pgprune compare``: the same run across estimators x seeds x rates (x inits x budgets).

It accepts every flag of ``pgprune run`` (taken from :func:`~pgprune_core.cli.options.
config_options`, so the two commands cannot drift apart) except those that become axes of
the grid (``--estimator``, ``--init``, ``--budget``: repeatable here; ``--seeds`` and
``--rates``: comma lists) and ``--out`` (the comparison directory).  Dotted overrides apply
to every cell; ``--estimator.<name>.<key> VALUE`` applies to that estimator's cells only
(``--estimator.ppo.lr 3e-3``).
"""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pgprune_core.cli.options import FLAG_KEYS, OVERRIDE_CONTEXT, config_options
from pgprune_core.compare.grid import (
    Cell,
    CompareRequest,
    build_cells,
    cell_status,
    forwards_per_step,
    parse_list,
)
from pgprune_core.config.resolve import parse_overrides
from pgprune_core.errors import ConfigError
from pgprune_core.plugin.hookspecs import hookimpl
from pgprune_core.report.console import console, err_console

#: run flags that the grid replaces with its own options
GRID_FLAGS = frozenset({"estimator", "init", "budget", "prune_rate", "seed", "out"})


class RichCompareReporter:
    """Two bars on stderr: cells done, and the steps of the cell running now."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._cells: TaskID | None = None
        self._steps: TaskID | None = None

    def phase(self, text: str) -> None:
        err_console.print(f"[cyan]•[/] {text}", highlight=False)

    def cells_start(self, total: int, done: int) -> None:
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=err_console)
        self._progress.start()
        self._cells = self._progress.add_task("cells", total=total, completed=done)
        self._steps = self._progress.add_task("", total=None, visible=False)

    def cell_start(self, cell: Cell, steps: int) -> None:
        if self._progress is not None and self._steps is not None:
            self._progress.reset(self._steps, total=steps or None, completed=0,
                                 description=f"  {cell.name}", visible=True)

    def cell_progress(self, step: int) -> None:
        if self._progress is not None and self._steps is not None:
            self._progress.update(self._steps, completed=step)

    def cell_end(self, cell: Cell, status: str) -> None:
        if self._progress is not None and self._cells is not None:
            self._progress.advance(self._cells)
            self._progress.console.print(f"[green]✓[/] {cell.name}: {status}", highlight=False)

    def cells_end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None


def _command_line(values: dict[str, Any], extra_args: list[str]) -> str:
    """The invocation as a reader could re-type it (options that were given, in order)."""
    words = ["pgprune", "compare"]
    for name, value in values.items():
        if value is None or value is False or value == [] or name == "ctx":
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words + extra_args)


def _print_cells(cells: list[Cell]) -> None:
    table = Table(title="cells")
    for column in ("cell", "steps", "forwards / step", "status"):
        table.add_column(column)
    for cell in cells:
        steps = cell.config.training.steps
        try:
            per_step = str(forwards_per_step(cell.config))
        except ConfigError:
            per_step = "?"
        table.add_row(cell.name, "epoch" if steps is None else str(steps), per_step,
                      cell_status(cell))
    console.print(table)


def _print_results(outcome: Any) -> None:
    from pgprune_core.compare.report import hamming_table, result_table

    header, body = result_table(outcome.rows, outcome.axes, compact=True)
    table = Table(title="pgprune compare (means over seeds)")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)
    h_header, h_body = hamming_table(outcome.rows, outcome.axes)
    if h_body:
        distances = Table(title="final masks differ (Hamming, fraction of units)")
        for column in h_header:
            distances.add_column(column)
        for row in h_body:
            distances.add_row(*row)
        console.print(distances)
    for name, path in outcome.outputs.items():
        console.print(f"{name}: {path}", highlight=False)


def compare(ctx: typer.Context, **values: Any) -> None:
    """Compare estimators on the same pruning problem, one run directory per cell.

    Every combination of --estimator, --seeds, --rates (and --init, --budget) is a cell
    under OUT/runs.

    Dense metrics and initial scores are computed once and shared.

    Each cell runs in its own process, so its time and peak memory are its own.

    Finished cells are not run again: re-running a killed comparison continues it.

    Writes compare.md, compare.csv, loss_curves.png and sparsity.png into OUT.
    """
    from pgprune_core.compare.runner import run_compare

    flags = {FLAG_KEYS[k]: v for k, v in values.items()
             if k in FLAG_KEYS and k not in GRID_FLAGS and v is not None}
    request = CompareRequest(
        out=values["out"],
        estimators=tuple(values["estimator"] or ()),
        seeds=parse_list(values["seeds"], int, "--seeds"),
        rates=parse_list(values["rates"], float, "--rates"),
        inits=tuple(values["init"] or ()),
        budgets=tuple(values["budget"] or ()),
        config_file=values["config"],
        flags=flags,
        overrides=parse_overrides(ctx.args),
        equal_forwards=values["equal_forwards"],
        isolate=not values["in_process"],
        command=_command_line(values, list(ctx.args)),
    )
    if values["dry_run"]:
        _, cells = build_cells(request)
        _print_cells(cells)
        return
    outcome = run_compare(request, RichCompareReporter())
    _print_results(outcome)


def _own_options(
    *,
    out: Annotated[Path, typer.Option("--out", help="Comparison directory (cells go to OUT/runs).")],
    estimator: Annotated[list[str] | None, typer.Option("--estimator", help="Estimator to compare (repeat: --estimator reinforce --estimator gumbel).", rich_help_panel="Grid")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2 (default: the config's seed).", rich_help_panel="Grid")] = None,
    rates: Annotated[str | None, typer.Option(help="Comma-separated prune rates, e.g. 0.3,0.5 (default: the config's).", rich_help_panel="Grid")] = None,
    init: Annotated[list[str] | None, typer.Option("--init", help="Initializer (repeatable: an axis of the grid).", rich_help_panel="Grid")] = None,
    budget: Annotated[list[str] | None, typer.Option("--budget", help="Budget mode (repeatable: an axis of the grid).", rich_help_panel="Grid")] = None,
    equal_forwards: Annotated[bool, typer.Option("--equal-forwards", help="Give every estimator --steps x (first estimator's masks per step) forward passes.", rich_help_panel="Grid")] = False,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run the cells in this process (faster start; memory numbers less clean on CPU).", rich_help_panel="Grid")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells, their steps and status; run nothing.", rich_help_panel="Grid")] = False,
) -> None:
    """Only a carrier of the grid options' signature."""


def _signature() -> inspect.Signature:
    """ctx, the run flags of ``config_options`` minus the grid's, then the grid options."""
    shared = inspect.signature(config_options(lambda config: None)).parameters.values()
    params = [p for p in shared if p.name not in GRID_FLAGS]
    own = inspect.signature(_own_options, eval_str=True).parameters.values()
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in [*params[1:], *own]]
    return inspect.Signature([params[0], *keyword])


@hookimpl
def pgprune_register_commands(app: typer.Typer) -> None:
    """``pgprune compare``, registered through the command hook like any plugin's command."""
    signature = _signature()
    compare.__signature__ = signature  # type: ignore[attr-defined]
    compare.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    app.command("compare", context_settings=OVERRIDE_CONTEXT)(compare)
