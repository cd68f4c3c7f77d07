"""``pgprune plugins``: every registered plugin, and every plugin that failed to load."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from pgprune_core.plugin.registry import get_registry
from pgprune_core.report.console import console

#: below this many columns the table keeps each plugin on one line
NARROW = 120


def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List registered plugins: kind, name, distribution, version, description."""
    registry = get_registry()
    specs = registry.all_specs()
    if as_json:
        typer.echo(json.dumps([spec.as_dict() for spec in specs], indent=2))
        return
    table = Table(title="pgprune plugins", show_lines=False)
    # narrow terminals: one line per plugin, the description cut short (--json has it all)
    narrow = console.width < NARROW
    cells = [(spec.kind, spec.name, spec.origin.distribution, spec.origin.version)
             for spec in specs]
    widths = [max([len(column), *(len(str(row[i])) for row in cells)])
              for i, column in enumerate(("kind", "name", "distribution", "version"))]
    for width, column in zip(widths, ("kind", "name", "distribution", "version"), strict=True):
        table.add_column(column, overflow="fold", no_wrap=narrow, width=width if narrow else None)
    # 5 columns: 6 rules and 2 spaces of padding each
    rest = max(12, console.width - sum(widths) - 16)
    table.add_column("description", overflow="ellipsis" if narrow else "fold", no_wrap=narrow,
                     width=rest if narrow else None)
    for spec in specs:
        table.add_row(spec.kind, spec.name, spec.origin.distribution, spec.origin.version,
                      spec.description)
    console.print(table)
    if registry.failures:
        failed = Table(title="plugins that failed to load", style="red")
        for column in ("plugin", "distribution", "version", "error"):
            failed.add_column(column, overflow="fold")
        for f in registry.failures:
            failed.add_row(f.plugin, f.distribution, f.version, f.error)
        console.print(failed)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
