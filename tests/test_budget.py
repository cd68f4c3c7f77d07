"""Budgets: the capacity of every mode, exact rates of the final mask, ties, protection."""

from __future__ import annotations

import pytest
import torch

from pgprune_core.errors import ConfigError
from pgprune_core.model.structure import UnitLayout, UnitSet
from pgprune_core.optim.budget import Budget, protected_mask
from pgprune_core.optim.projection import project

N_LAYERS = 4


def _unit_set(kind: str, per_layer: int, cost: int) -> UnitSet:
    layer = torch.arange(N_LAYERS).repeat_interleave(per_layer)
    index = torch.arange(per_layer).repeat(N_LAYERS)
    return UnitSet(kind, layer, index, torch.full((N_LAYERS * per_layer,), cost))


def _layout(with_layers: bool = False) -> UnitLayout:
    """4 layers x (6 channels of cost 30, 2 heads of cost 40) [+ 4 layers of cost 500]."""
    sets = [_unit_set("channel", 6, 30), _unit_set("head", 2, 40)]
    if with_layers:
        sets.append(_unit_set("layer", 1, 500))
    return UnitLayout(sets)


def _first_layer_protected(layout: UnitLayout) -> torch.Tensor:
    return protected_mask(layout, N_LAYERS, 1, 0)


# -- capacities -------------------------------------------------------------------------


def test_per_type_capacity_counts_protected_units_in_the_rate() -> None:
    layout = _layout()
    budget = Budget("per-type", layout, 0.5, _first_layer_protected(layout))
    channel, head = budget.constraints()
    # 24 channels, 6 protected: keep 12 in all, 12 - 6 for the 18 free ones
    assert channel.indices.tolist() == list(range(6, 24))
    assert torch.equal(channel.weights, torch.ones(18, dtype=torch.float64))
    assert channel.capacity == pytest.approx(6.0)
    # 8 heads, 2 protected: keep 4, 2 of them for the free ones
    assert head.indices.tolist() == list(range(26, 32))
    assert head.capacity == pytest.approx(2.0)


def test_global_capacity() -> None:
    layout = _layout()
    (constraint,) = Budget("global", layout, 0.5, _first_layer_protected(layout)).constraints()
    assert constraint.indices.numel() == 24
    assert constraint.capacity == pytest.approx(0.5 * 32 - 8)


def test_params_capacity_is_in_normalised_parameters() -> None:
    layout = _layout(with_layers=True)
    protected = _first_layer_protected(layout)
    (constraint,) = Budget("params", layout, 0.3, protected).constraints()
    cost = layout.cost.double()
    free_cost = cost[~protected]
    scale = float(free_cost.mean())
    torch.testing.assert_close(constraint.weights, free_cost / scale)
    assert constraint.weights.mean() == pytest.approx(1.0)
    keep_budget = 0.7 * float(cost.sum()) - float(cost[protected].sum())
    assert constraint.capacity * scale == pytest.approx(keep_budget)


def test_params_budget_with_equal_costs_is_the_global_one() -> None:
    layout = UnitLayout([_unit_set("channel", 6, 7), _unit_set("head", 2, 7)])
    (params,) = Budget("params", layout, 0.4).constraints()
    (global_,) = Budget("global", layout, 0.4).constraints()
    assert torch.equal(params.weights, global_.weights)
    assert params.capacity == pytest.approx(global_.capacity)


def test_local_capacity_raises_the_rate_of_unprotected_layers() -> None:
    layout = _layout(with_layers=True)
    budget = Budget("local", layout, 0.5, _first_layer_protected(layout))
    constraints = budget.constraints()
    # 3 free layers x (channel, head) groups + one group for the layer kind
    assert len(constraints) == 7
    channel_groups = [c for c in constraints if c.indices.numel() == 6]
    assert len(channel_groups) == 3
    # rate on free channels: 0.5 * 24 / 18 = 2/3, so each layer keeps 6 / 3 = 2
    assert all(c.capacity == pytest.approx(2.0) for c in channel_groups)
    layer_group = constraints[-1]
    assert layer_group.indices.tolist() == [33, 34, 35]
    assert layer_group.capacity == pytest.approx(0.5 * 4 - 1)


def test_constraints_are_disjoint_and_avoid_protected_units() -> None:
    layout = _layout(with_layers=True)
    protected = protected_mask(layout, N_LAYERS, 1, 1)
    for mode in ("per-type", "global", "params", "local"):
        covered = torch.cat([c.indices for c in Budget(mode, layout, 0.3, protected).constraints()])
        assert covered.unique().numel() == covered.numel(), mode
        assert not protected[covered].any(), mode


def test_impossible_rate_is_a_config_error_with_the_numbers() -> None:
    layout = _layout()
    protected = protected_mask(layout, N_LAYERS, 2, 1)  # 3 of 4 layers
    with pytest.raises(ConfigError, match=r"'channel'.*24 units, 18 protected.*at most 6"):
        Budget("per-type", layout, 0.5, protected)
    with pytest.raises(ConfigError, match="parameters"):
        Budget("params", layout, 0.5, protected)
    with pytest.raises(ConfigError):
        Budget("local", layout, 0.3, protected)
    Budget("global", layout, 0.25, protected)  # exactly the free share: feasible


def test_bad_arguments() -> None:
    layout = _layout()
    with pytest.raises(ConfigError):
        Budget("per-type", layout, 1.0)
    with pytest.raises(ConfigError):
        Budget("sideways", layout, 0.3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="all 4 layers"):
        protected_mask(layout, N_LAYERS, 2, 2)


def test_protected_mask_selects_first_and_last_layers() -> None:
    layout = _layout()
    mask = protected_mask(layout, N_LAYERS, 1, 1)
    assert torch.equal(mask, torch.isin(layout.layer, torch.tensor([0, 3])))
    assert not protected_mask(layout, N_LAYERS, 0, 0).any()


# -- the final mask ---------------------------------------------------------------------


def _scores(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.7])
def test_per_type_removes_the_lowest_of_each_kind(rate: float) -> None:
    layout = _layout()
    scores = _scores(len(layout))
    budget = Budget("per-type", layout, rate)
    keep = budget.final_mask(scores)
    for kind, sl in layout.offsets.items():
        n = sl.stop - sl.start
        removed = int((~keep[sl]).sum())
        assert removed == int(rate * n + 0.5 + 1e-9), kind
        kept_min = scores[sl][keep[sl]].min()
        assert torch.all(scores[sl][~keep[sl]] < kept_min)
        assert budget.removed_fraction(keep)[kind] == pytest.approx(removed / n)


def test_global_and_local_rates() -> None:
    layout = _layout()
    scores = _scores(len(layout), 1)
    keep = Budget("global", layout, 0.3).final_mask(scores)
    assert int((~keep).sum()) == round(0.3 * 32)
    assert torch.all(scores[~keep] < scores[keep].min())
    keep = Budget("local", layout, 0.5).final_mask(scores)
    for layer in range(N_LAYERS):
        in_layer = layout.layer == layer
        assert int((~keep[:24][in_layer[:24]]).sum()) == 3  # channels of the layer
        assert int((~keep[24:][in_layer[24:]]).sum()) == 1  # heads of the layer


def test_rounding_is_half_up() -> None:
    layout = UnitLayout([UnitSet("head", torch.zeros(5, dtype=torch.int64), torch.arange(5),
                                 torch.ones(5, dtype=torch.int64))])
    keep = Budget("per-type", layout, 0.5).final_mask(torch.arange(5.0))
    assert keep.tolist() == [False, False, False, True, True]


def test_ties_are_broken_by_index() -> None:
    layout = _layout()
    keep = Budget("global", layout, 0.25).final_mask(torch.zeros(len(layout)))
    assert (~keep).nonzero().flatten().tolist() == list(range(8))


def test_protected_units_are_never_pruned() -> None:
    layout = _layout()
    protected = _first_layer_protected(layout)
    scores = _scores(len(layout), 2)
    scores[protected] = -1.0  # the worst scores of all
    for mode in ("per-type", "global", "params", "local"):
        budget = Budget(mode, layout, 0.5, protected)
        keep = budget.final_mask(scores)
        assert keep[protected].all(), mode
        fractions = budget.removed_fraction(keep)
        assert fractions["all"] == pytest.approx(0.5, abs=0.05), mode


def test_params_removes_the_shortest_prefix_reaching_the_target() -> None:
    layout = _layout(with_layers=True)
    cost = layout.cost.double()
    for seed in range(5):
        scores = _scores(len(layout), seed)
        budget = Budget("params", layout, 0.3)
        keep = budget.final_mask(scores)
        removed = ~keep
        target = 0.3 * float(cost.sum())
        assert float(cost[removed].sum()) >= target
        last = int(torch.nonzero(removed & (scores == scores[removed].max()))[0])
        assert float(cost[removed].sum()) - float(cost[last]) < target
        assert torch.all(scores[removed] < scores[keep].min())
        assert budget.removed_fraction(keep)["all"] == pytest.approx(
            float(cost[removed].sum()) / float(cost.sum()))


def test_final_mask_satisfies_the_constraints() -> None:
    """The mask cut at the end lies in the feasible set the policy was optimised in."""
    layout = _layout()
    protected = _first_layer_protected(layout)
    budget = Budget("per-type", layout, 0.5, protected)
    s = project(_scores(len(layout), 3) * 4 - 1, budget.constraints())
    s[protected] = 1.0
    keep = budget.final_mask(s)
    for constraint in budget.constraints():
        assert float(keep[constraint.indices].double() @ constraint.weights) <= constraint.capacity + 1e-9


def test_nan_scores_are_refused() -> None:
    layout = _layout()
    scores = torch.zeros(len(layout))
    scores[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Budget("global", layout, 0.3).final_mask(scores)
