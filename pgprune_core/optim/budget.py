"""The pruning budget: which constraints the probabilities live under, and the final mask.

A budget splits the prunable units into disjoint *groups*; in each group a share of the
units (or of their parameters) must go.  The same groups define both halves of a run, so
the feasible set the policy is optimised in and the mask that is finally cut agree:

==========  =========================================  ========================================
mode        groups (one constraint each)               what the rate counts
==========  =========================================  ========================================
per-type    one per granularity kind (authors' code)   units of that kind
global      one over every unit (paper text, Eq. 3)    units, a head weighing as a channel
params      one over every unit                        parameters (unit costs from the layout)
local       one per (layer, kind) (Sect. 5.2 ablation) units of that kind in that layer
==========  =========================================  ========================================

Protected units (``--protect-layers``) stay in the denominator: "30 %" means 30 % of all
units of the group, so the free units must give up more.  A constraint therefore covers the
free units only, with capacity = keep budget - what the protected units already keep.  In
``local`` mode a fully protected layer cannot lose its share, so every unprotected
(layer, kind) group is pruned at the same raised rate ``rate * n_kind / n_free_kind``, which
keeps the kind's overall rate (LLM-Pruner does the same for its protected blocks).  A
kind with at most one unit per layer (the ``layer`` granularity) is a single ``local`` group:
"the same rate in every layer" means nothing for it.

Shape constraints (``pruning.shape``, ``pruning.channel_multiple``) shape the mask for the
serving formats (``docs/serving.md``).  ``uniform-heads`` gives the head kind one group per
layer, each removing the same number of KV groups (which ones is chosen per layer by the
scores); ``uniform`` does so for heads and MLP channels.  The projection sees those
per-layer groups, so the probabilities already live in the uniform set.  With
``channel_multiple`` N every unprotected layer keeps a multiple of N channels: a per-layer
group keeps its target rounded to the nearest multiple (halves up); the per-type channel
group keeps ``N * round(kept / N)`` channels in all, allotted in blocks of N: each layer's
channels ranked by score, the blocks of N in that order valued by their score sums, and the
highest-valued blocks kept (a layer's block values do not increase, so this keeps exactly
the masks of largest total score among those of that size, and a layer's blocks are kept
from the front).  The projection sees the channel group's unrounded capacity.  Shape
constraints need the ``per-type`` or ``local`` budget (the others trade kinds against each
other) and, for the uniform kinds, unprotected layers of equal unit counts.

Floors: a unit set may name, per layer, the fewest units the layer keeps
(``UnitSet.min_kept``; the ``expert`` kind: the router's top-k).  The final mask passes
over a unit whose layer is at its floor and removes the next-lowest instead, and a budget
whose target cannot be met that way is refused when it is built, before any optimisation.
The projection does not see the floors (sampled masks may go below them; the expert kind
defines what such a mask computes).

Rounding (:meth:`Budget.final_mask`): with unit weights a group removes
``round(target)`` units, rounding halves up (with a 1e-9 guard against the float error of
``rate * n``); with ``params`` it removes the shortest prefix of lowest-score units whose
cost reaches ``rate * total cost``, so the removed cost is at least the target and exceeds
it by less than one unit's cost.  Ties in score are broken by position in the layout: the
lower index is removed first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from pgprune_core.errors import ConfigError
from pgprune_core.interfaces import Constraint
from pgprune_core.model.structure import UnitLayout

BudgetMode = Literal["per-type", "global", "params", "local"]
BUDGET_MODES: tuple[str, ...] = ("per-type", "global", "params", "local")
Shape = Literal["free", "uniform-heads", "uniform"]
SHAPES: tuple[str, ...] = ("free", "uniform-heads", "uniform")
#: the kinds each shape makes uniform across layers
UNIFORM_KINDS: dict[str, tuple[str, ...]] = {"free": (), "uniform-heads": ("head",),
                                             "uniform": ("head", "channel")}
#: the kind ``channel_multiple`` applies to
CHANNEL_KIND = "channel"


@dataclass(frozen=True)
class _Group:
    """One constraint's worth of units."""

    label: str
    free: torch.Tensor  # int64 [k], ascending layout indices of the unprotected units
    weights: torch.Tensor  # float64 [k], unit weights or parameter costs (unnormalised)
    remove: float  # weight the group must lose, in the same units as ``weights``
    #: kept units of each layer a multiple of this (1: no constraint)
    multiple: int = 1
    layers: torch.Tensor | None = None  # int64 [k], layer of each free unit (when multiple > 1)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


class Budget:
    """The feasible set of the policy and the rule that turns scores into the final mask."""

    def __init__(
        self,
        mode: BudgetMode,
        layout: UnitLayout,
        prune_rate: float,
        protected: torch.Tensor | None = None,
        shape: Shape = "free",
        channel_multiple: int = 1,
    ) -> None:
        if mode not in BUDGET_MODES:
            raise ConfigError(f"unknown budget {mode!r}; choose one of {', '.join(BUDGET_MODES)}")
        if shape not in SHAPES:
            raise ConfigError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
        if channel_multiple < 1:
            raise ConfigError(f"pruning.channel_multiple must be >= 1, got {channel_multiple}")
        if not 0.0 < prune_rate < 1.0:
            raise ConfigError(f"the prune rate must lie in (0, 1), got {prune_rate}")
        n = len(layout)
        if protected is None:
            protected = torch.zeros(n, dtype=torch.bool)
        if protected.shape != (n,) or protected.dtype != torch.bool:
            raise ValueError(f"protected must be a bool vector of length {n}")
        self.mode: BudgetMode = mode
        self.layout = layout
        self.prune_rate = float(prune_rate)
        self.protected = protected.clone()
        self.shape: Shape = shape
        self.channel_multiple = int(channel_multiple)
        self._check_shape()
        self._cells, self._floors = _floor_cells(layout)
        self._groups = self._build_groups()
        for group in self._groups:
            self._check_floors(group)

    # -- groups -------------------------------------------------------------------------
    def _weights(self) -> torch.Tensor:
        if self.mode == "params":
            return self.layout.cost.to(torch.float64)
        return torch.ones(len(self.layout), dtype=torch.float64)

    def _constrained(self) -> set[str]:
        kinds = set(UNIFORM_KINDS[self.shape])
        if self.channel_multiple > 1:
            kinds.add(CHANNEL_KIND)
        return kinds & set(self.layout.kinds)

    def _check_shape(self) -> None:
        """Refuse shape constraints the budget or the model cannot honour exactly."""
        constrained = self._constrained()
        if not constrained:
            return
        what = (f"pruning.shape {self.shape}" if self.shape != "free"
                else f"pruning.channel_multiple {self.channel_multiple}")
        if self.mode not in ("per-type", "local"):
            raise ConfigError(f"{what} needs --budget per-type or local (budget {self.mode} trades "
                              f"kinds against each other, so no layer's count is fixed)")
        for kind in sorted(set(UNIFORM_KINDS[self.shape]) & constrained):
            units = self.layout[kind]
            free = ~self.protected[self.layout.offsets[kind]]
            counts = torch.bincount(units.layer[free]) if bool(free.any()) else torch.zeros(0)
            counts = counts[counts > 0]
            if bool(self.protected[self.layout.offsets[kind]].any()):
                raise ConfigError(f"pruning.shape {self.shape} prunes every layer's {kind}s alike, "
                                  f"but --protect-layers keeps some layers whole; protect none, "
                                  f"or use --pruning.shape free")
            if counts.numel() and bool((counts != counts[0]).any()):
                raise ConfigError(f"pruning.shape {self.shape}: the layers have different numbers "
                                  f"of {kind} units ({sorted(set(counts.tolist()))}), so no count "
                                  f"is the same in every layer")

    def _build_groups(self) -> list[_Group]:
        weights, rate, free_mask = self._weights(), self.prune_rate, ~self.protected
        kind_ids = self.layout.kind_ids()
        if self.mode in ("global", "params"):
            members = [("all", torch.ones(len(self.layout), dtype=torch.bool))]
        else:
            members = [(kind, kind_ids == i) for i, kind in enumerate(self.layout.kinds)]
        for label, member in members:
            self._check_feasible(label, weights, member)
        uniform = set(UNIFORM_KINDS[self.shape])
        groups = []
        layers = self.layout.layer
        for label, member in members:
            n_kind, n_free = int(member.sum()), int((member & free_mask).sum())
            if n_free == 0:
                continue
            multiple = self.channel_multiple if label == CHANNEL_KIND else 1
            if self.mode != "local" and label not in uniform:
                free = torch.nonzero(member & free_mask).flatten()
                groups.append(_Group(label, free, weights[free], rate * float(weights[member].sum()),
                                     multiple, layers[free] if multiple > 1 else None))
                continue
            kind_rate = rate * n_kind / n_free  # <= 1, checked above
            kind_layers = layers[member]
            if kind_layers.unique().numel() == kind_layers.numel():  # one unit per layer
                splits = [(label, member)]
            else:
                splits = [(f"{label}@{int(layer)}", member & (layers == layer))
                          for layer in kind_layers.unique().tolist()]
            for sub_label, sub in splits:
                free = torch.nonzero(sub & free_mask).flatten()
                if free.numel():
                    groups.append(_Group(sub_label, free, weights[free], kind_rate * free.numel(),
                                         multiple, layers[free] if multiple > 1 else None))
        return groups

    def _check_feasible(self, label: str, weights: torch.Tensor, member: torch.Tensor) -> None:
        """The rate counts protected units too; refuse it when the free ones cannot pay."""
        total = float(weights[member].sum())
        free = float(weights[member & ~self.protected].sum())
        need = self.prune_rate * total
        if need > free * (1.0 + 1e-12):
            unit = "parameters" if self.mode == "params" else "units"
            what = "all prunable" if label == "all" else f"{label!r}"
            raise ConfigError(
                f"cannot prune {self.prune_rate:.1%} of {what} {unit}: {total:.0f} {unit}, "
                f"{total - free:.0f} protected, so at most {free:.0f} "
                f"({free / total if total else 0.0:.1%}) can go; "
                f"protect fewer layers or lower the prune rate"
            )

    def _check_floors(self, group: _Group) -> None:
        """Refuse a group whose target would take a layer below its fewest kept units
        (``UnitSet.min_kept``: a mixture-of-experts layer keeps its router's top-k)."""
        cells = self._cells[group.free]
        if not bool((cells >= 0).any()):
            return
        keepable = torch.ones(group.free.numel(), dtype=torch.bool)
        for cell in cells[cells >= 0].unique().tolist():
            members = torch.nonzero(cells == cell).flatten()
            cheapest = members[torch.sort(group.weights[members], stable=True).indices]
            keepable[cheapest[:self._floors[cell][2]]] = False
        removable = float(group.weights[keepable].sum())
        if group.remove > removable * (1.0 + 1e-12):
            kind, layer, floor = self._floors[int(cells[cells >= 0][0])]
            total = int((self._cells == int(cells[cells >= 0][0])).sum())
            unit = "parameters" if self.mode == "params" else "units"
            raise ConfigError(
                f"cannot prune {self.prune_rate:.1%} of {group.label!r} {unit}: every layer must "
                f"keep at least {floor} of its {kind} units (layer {layer}: {floor} of {total}, "
                f"the router's top-k), so at most {removable:.0f} of "
                f"{float(group.weights.sum()):.0f} can go; lower the prune rate"
            )

    # -- the feasible set ---------------------------------------------------------------
    def constraints(self) -> list[Constraint]:
        """One constraint per group over its free units, disjoint.

        Capacities are in expected kept units (or parameters).  ``params`` weights are
        divided by the group's mean free cost, so they are O(1) like unit weights and the
        projection's multiplier lives on the same scale in every mode.
        """
        out = []
        for group in self._groups:
            scale = float(group.weights.mean())
            capacity = (float(group.weights.sum()) - group.remove) / scale
            out.append(Constraint(group.free.clone(), group.weights / scale, max(capacity, 0.0)))
        return out

    # -- the final mask -----------------------------------------------------------------
    def final_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """bool [n], True = keep: in every group the lowest-score free units go until the
        group's target is met (module docstring: rounding and ties); protected units stay."""
        if scores.shape != (len(self.layout),):
            raise ValueError(f"expected scores of shape [{len(self.layout)}], got {tuple(scores.shape)}")
        values = scores.detach().to(device="cpu", dtype=torch.float64)
        if torch.isnan(values).any():
            raise ValueError("scores contain NaN; cannot rank units")
        keep = torch.ones(len(self.layout), dtype=torch.bool)
        for group in self._groups:
            order = torch.sort(values[group.free], stable=True).indices
            if bool((self._cells[group.free] >= 0).any()):
                self._remove_with_floors(group, order, keep)
                continue
            if self.mode == "params":
                # the feasibility check guarantees the full prefix reaches the target
                removed_cost = torch.cumsum(group.weights[order], 0)
                reached = removed_cost >= group.remove * (1.0 - 1e-12)
                n_remove = int(reached.to(torch.int8).argmax()) + 1
            elif group.multiple > 1:
                assert group.layers is not None
                kept = _multiple_keep(values[group.free], group.layers, group.multiple,
                                      group.free.numel() - _round_half_up(group.remove))
                keep[group.free[~kept]] = False
                continue
            else:
                n_remove = min(_round_half_up(group.remove), order.numel())
            keep[group.free[order[:n_remove]]] = False
        return keep

    def _remove_with_floors(self, group: _Group, order: torch.Tensor, keep: torch.Tensor) -> None:
        """The group's lowest-score units go, as in :meth:`final_mask`, passing over a unit
        whose layer keeps no more than its floor (the check at construction guarantees
        the target is reachable)."""
        left = {cell: int((self._cells == cell).sum()) for cell in self._floors}
        n_remove = _round_half_up(group.remove)
        removed, removed_cost = 0, 0.0
        for position in order.tolist():
            if (removed_cost >= group.remove * (1.0 - 1e-12) if self.mode == "params"
                    else removed >= n_remove):
                break
            unit = int(group.free[position])
            cell = int(self._cells[unit])
            if cell >= 0:
                if left[cell] <= self._floors[cell][2]:
                    continue
                left[cell] -= 1
            keep[unit] = False
            removed += 1
            removed_cost += float(group.weights[position])

    def removed_fraction(self, keep: torch.Tensor) -> dict[str, float]:
        """Removed share of each kind and of ``all`` units, in the budget's units
        (parameters for ``params``, unit counts otherwise), protected units included in
        the denominators: the number to compare with the requested rate."""
        weights, removed = self._weights(), ~keep.to(torch.bool).cpu()
        kind_ids = self.layout.kind_ids()
        out = {}
        for i, kind in enumerate(self.layout.kinds):
            member = kind_ids == i
            total = float(weights[member].sum())
            out[kind] = float(weights[member & removed].sum()) / total if total else 0.0
        total = float(weights.sum())
        out["all"] = float(weights[removed].sum()) / total if total else 0.0
        return out


def _multiple_keep(scores: torch.Tensor, layers: torch.Tensor, multiple: int, target: int) -> torch.Tensor:
    """bool [k]: keep ``multiple * round(target / multiple)`` of the units (at most what
    whole blocks of every layer hold), each layer a multiple of ``multiple``, of largest
    total score (module docstring).  Ties: the lower index is removed first."""
    n_blocks = _round_half_up(max(target, 0) / multiple)
    blocks: list[tuple[float, int, int, torch.Tensor]] = []  # (-value, layer, position, units)
    for layer in layers.unique().tolist():
        members = torch.nonzero(layers == layer).flatten()
        # ascending with ties by index = removal order; kept order is its reverse
        ranked = members[torch.sort(scores[members], stable=True).indices].flip(0)
        for position in range(members.numel() // multiple):
            units = ranked[position * multiple:(position + 1) * multiple]
            blocks.append((-float(scores[units].sum()), int(layer), position, units))
    blocks.sort(key=lambda block: block[:3])
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    for _, _, _, units in blocks[:n_blocks]:
        keep[units] = True
    return keep


def _floor_cells(layout: UnitLayout) -> tuple[torch.Tensor, dict[int, tuple[str, int, int]]]:
    """Per unit, the id of its (kind, layer) cell when that cell has a floor of kept units
    (``UnitSet.min_kept``), else -1; and per cell id, its kind, layer and floor."""
    cells = torch.full((len(layout),), -1, dtype=torch.int64)
    floors: dict[int, tuple[str, int, int]] = {}
    for unit_set in layout:
        offset = layout.offsets[unit_set.kind].start
        for layer, floor in sorted(unit_set.min_kept.items()):
            if floor <= 0:
                continue
            cell = len(floors)
            floors[cell] = (unit_set.kind, layer, floor)
            cells[offset + torch.nonzero(unit_set.layer == layer).flatten()] = cell
    return cells, floors


def protected_mask(layout: UnitLayout, n_layers: int, first: int, last: int) -> torch.Tensor:
    """bool [n]: the units of the first ``first`` and the last ``last`` decoder layers
    (``--protect-layers first,last``; LLM-Pruner and the paper use 4,2)."""
    if first < 0 or last < 0:
        raise ConfigError(f"--protect-layers needs counts >= 0, got {first},{last}")
    if first + last >= n_layers and first + last > 0:
        raise ConfigError(
            f"--protect-layers {first},{last} protects all {n_layers} layers; nothing left to prune"
        )
    layers = list(range(first)) + list(range(n_layers - last, n_layers))
    return layout.protected(layers)
