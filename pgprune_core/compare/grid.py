"""The comparison grid: its axes, its cells and the rules that make them (the types every
other module of :mod:`pgprune_core.compare` shares, so this one imports none of them).

A grid ``estimators x seeds x rates x inits x budgets`` becomes one :class:`Cell` per
combination, each an ordinary run directory under ``OUT/runs/``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgprune_core.config.resolve import resolve_config
from pgprune_core.config.sections import RunConfig
from pgprune_core.errors import ConfigError, PgpruneError
from pgprune_core.plugin.registry import Registry, get_registry
from pgprune_core.run.rundir import RunDir, config_digest

FORMAT = "pgprune-compare/1"


class CellFailedError(PgpruneError):
    """A cell's run ended with an error (its log says why)."""


# -- the grid -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GridAxes:
    """The values each axis of the grid takes (one value = not an axis of the tables)."""

    estimators: tuple[str, ...]
    seeds: tuple[int, ...]
    rates: tuple[float, ...]
    inits: tuple[str, ...]
    budgets: tuple[str, ...]


@dataclass(frozen=True)
class CompareRequest:
    """Everything ``pgprune compare`` was asked to do."""

    out: Path
    #: estimators to compare; the other axes default to the base configuration's value
    estimators: tuple[str, ...]
    seeds: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()
    inits: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()
    config_file: Path | None = None
    #: run flags as dotted keys (``{"model.name_or_path": ...}``)
    flags: Mapping[str, Any] = field(default_factory=dict)
    #: dotted overrides for every cell; ``estimator.<name>.<key>`` ones go to that
    #: estimator's cells only (see :func:`split_estimator_overrides`)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    equal_forwards: bool = False
    isolate: bool = True
    #: the command line, recorded in compare.json and compare.md
    command: str = ""


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    estimator: str
    init: str
    budget: str
    rate: float
    seed: int
    config: RunConfig
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group(self) -> tuple[str, str, float]:
        """What the tables average over seeds within: (init, budget, rate)."""
        return (self.init, self.budget, self.rate)


def parse_list(text: str | None, convert: Callable[[str], Any], what: str) -> tuple[Any, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; ``None`` or empty -> ``()``; duplicates refused."""
    if not text:
        return ()
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(convert(part))
        except ValueError:
            raise ConfigError(f"{what}: cannot read {part!r} in {text!r}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{what}: a value is listed twice in {text!r}")
    return tuple(values)


#: configuration keys each cell's position in the grid sets -> the option that sets them
GRID_KEYS = {"estimator.name": "--estimator", "init.name": "--init", "pruning.budget": "--budget",
             "pruning.prune_rate": "--rates", "training.seed": "--seeds", "output.dir": "--out"}


def split_estimator_overrides(
    overrides: Mapping[str, Any], estimators: Sequence[str], registry: Registry
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Separate ``--estimator.<name>.<key> V`` (for that estimator's cells only, as
    ``estimator.<key>``) from the overrides every cell gets.  A plain ``--estimator.<key>``
    goes to every compared estimator that has the option (``none`` has no ``lr``), and is
    refused when none has it.  Naming an estimator that is not in the grid is a mistake,
    not something to ignore silently."""
    known = set(registry.names("estimator"))
    common: dict[str, Any] = {}
    specific: dict[str, dict[str, Any]] = {name: {} for name in estimators}
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "estimator" and len(parts) >= 2 and parts[1] not in known | {"name"}:
            takers = [name for name in estimators
                      if parts[1] in registry.cls("estimator", name).Config.model_fields]
            if not takers:
                raise ConfigError(f"--{key}: no compared estimator has an option "
                                  f"'{parts[1]}' ({', '.join(estimators)})")
            for name in takers:
                specific[name][key] = value
        elif parts[0] == "estimator" and len(parts) >= 3 and parts[1] in known:
            if parts[1] not in specific:
                raise ConfigError(
                    f"--{key} sets an option of '{parts[1]}', which is not compared here "
                    f"(--estimator {' --estimator '.join(estimators)})"
                )
            specific[parts[1]][".".join(["estimator", *parts[2:]])] = value
        elif key in GRID_KEYS:
            raise ConfigError(f"--{key} is set by the grid; use {GRID_KEYS[key]} instead")
        else:
            common[key] = value
    return common, specific


def forwards_per_step(config: RunConfig, registry: Registry | None = None) -> int:
    """Forward passes of the batch per optimisation step, as the estimator declares them
    (:attr:`pgprune_core.interfaces.Estimator.forwards_per_step`, by default its
    ``n_samples``)."""
    registry = registry or get_registry()
    cls = registry.cls("estimator", config.estimator.name)
    value = cls(config.estimator).forwards_per_step
    if not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"--equal-forwards needs each estimator's forward passes per step; estimator "
            f"'{config.estimator.name}' does not declare them (forwards_per_step)"
        )
    return value


def cell_name(estimator: str, init: str, budget: str, rate: float, seed: int) -> str:
    return f"{estimator}-{init}-{budget}-rate{rate:g}-seed{seed}"


def build_cells(request: CompareRequest, registry: Registry | None = None) -> tuple[GridAxes, list[Cell]]:
    """Resolve the configuration of every cell (validated like ``pgprune run``'s)."""
    registry = registry or get_registry()
    if not request.estimators:
        raise ConfigError("name at least one estimator: --estimator reinforce --estimator gumbel ...")
    if len(set(request.estimators)) != len(request.estimators):
        raise ConfigError(f"an estimator is listed twice: {', '.join(request.estimators)}")
    for name in request.estimators:
        registry.get("estimator", name)
    common, specific = split_estimator_overrides(request.overrides, request.estimators, registry)
    base = resolve_config(request.config_file, request.flags, common, registry)
    axes = GridAxes(
        estimators=tuple(request.estimators),
        seeds=request.seeds or (base.training.seed,),
        rates=request.rates or (base.pruning.prune_rate,),
        inits=request.inits or (base.init.name,),
        budgets=request.budgets or (base.pruning.budget,),
    )
    runs = request.out / "runs"

    def resolve(estimator: str, init: str, budget: str, rate: float, seed: int,
                extra: Mapping[str, Any]) -> RunConfig:
        flags = {**request.flags, "estimator.name": estimator, "init.name": init,
                 "pruning.budget": budget, "pruning.prune_rate": rate, "training.seed": seed,
                 "output.dir": str(runs / cell_name(estimator, init, budget, rate, seed))}
        return resolve_config(request.config_file, flags, {**common, **specific[estimator], **extra},
                              registry)

    budget_forwards: int | None = None
    if request.equal_forwards:
        if base.training.steps is None:
            raise ConfigError("--equal-forwards needs --steps: the forward budget is --steps x "
                              "the first estimator's masks per step")
        first = resolve(axes.estimators[0], axes.inits[0], axes.budgets[0], axes.rates[0],
                        axes.seeds[0], {})
        budget_forwards = base.training.steps * forwards_per_step(first, registry)
    cells = []
    for estimator, init, budget, rate, seed in itertools.product(
            axes.estimators, axes.inits, axes.budgets, axes.rates, axes.seeds):
        config = resolve(estimator, init, budget, rate, seed, {})
        if budget_forwards is not None and registry.cls("estimator", estimator).optimises:
            steps = max(1, round(budget_forwards / forwards_per_step(config, registry)))
            config = resolve(estimator, init, budget, rate, seed, {"training.steps": steps})
        path = runs / cell_name(estimator, init, budget, rate, seed)
        cells.append(Cell(estimator, init, budget, rate, seed, config, path))
    return axes, cells


# -- what the cells share ---------------------------------------------------------------


def cell_status(cell: Cell) -> str:
    """``done``, ``partial`` (a run directory that has not finished) or ``new``.  A cell
    directory that holds another configuration's run is refused."""
    run = RunDir(cell.path)
    if not run.marker.exists():
        if cell.path.exists() and any(cell.path.iterdir()):
            raise ConfigError(f"{cell.path} exists and is not a pgprune run; choose another --out")
        return "new"
    marker = run.read_marker()
    if marker.get("digest") != config_digest(cell.config):
        raise ConfigError(
            f"{cell.path} holds a run with other settings than this comparison asks for; "
            f"use another --out (or delete that directory to run it again)"
        )
    return "done" if marker.get("status") == "done" and run.metrics.exists() else "partial"
