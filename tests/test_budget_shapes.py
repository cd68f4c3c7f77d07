"""Shape constraints of the budget (``pruning.shape``, ``pruning.channel_multiple``): the
final mask honours them exactly and is the best mask of its size, checked against a
brute-force enumeration of every mask on small layouts; the projection keeps uniform kinds
uniform."""

from __future__ import annotations

import itertools

import pytest
import torch

from pgprune_core.config.sections import PruningSection
from pgprune_core.errors import ConfigError
from pgprune_core.model.structure import UnitLayout, UnitSet
from pgprune_core.optim.budget import SHAPES, Budget, protected_mask
from pgprune_core.optim.projection import project


def _unit_set(kind: str, widths: list[int]) -> UnitSet:
    layer = torch.cat([torch.full((w,), i, dtype=torch.int64) for i, w in enumerate(widths)])
    index = torch.cat([torch.arange(w, dtype=torch.int64) for w in widths])
    return UnitSet(kind, layer, index, torch.ones(layer.numel(), dtype=torch.int64))


def _layout(heads: list[int], channels: list[int]) -> UnitLayout:
    return UnitLayout([_unit_set("head", heads), _unit_set("channel", channels)])


def _per_layer(units: UnitSet, keep: torch.Tensor) -> list[int]:
    return [int(keep[units.layer == layer].sum()) for layer in units.layer.unique().tolist()]


def _brute_force(scores: torch.Tensor, units: UnitSet, allowed) -> torch.Tensor:
    """The keep-vector of largest kept score among every mask whose per-layer kept counts
    ``allowed(counts)`` accepts."""
    best, best_value = None, -float("inf")
    for bits in itertools.product([False, True], repeat=len(units)):
        keep = torch.tensor(bits)
        if not allowed(_per_layer(units, keep)):
            continue
        value = float(scores[keep].sum())
        if value > best_value:
            best, best_value = keep, value
    assert best is not None
    return best


def test_shapes_are_the_config_choices():
    assert PruningSection.model_fields["shape"].annotation.__args__ == SHAPES


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_uniform_keeps_the_same_count_in_every_layer_and_the_best_units(seed, rate):
    layout = _layout([3, 3, 3], [4, 4, 4])
    scores = torch.rand(len(layout), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    keep = Budget("per-type", layout, rate, shape="uniform").final_mask(scores)
    parts, score_parts = layout.split(keep), layout.split(scores)
    for kind, width in (("head", 3), ("channel", 4)):
        units = layout[kind]
        kept = width - round(rate * width + 1e-9)  # every layer removes round(rate * width)
        assert _per_layer(units, parts[kind]) == [kept] * 3
        reference = _brute_force(score_parts[kind], units, lambda counts, k=kept: counts == [k] * 3)
        assert torch.equal(parts[kind], reference), kind


@pytest.mark.parametrize("seed", range(4))
def test_uniform_heads_leaves_channels_free(seed):
    layout = _layout([4, 4, 4], [5, 5, 5])
    scores = torch.rand(len(layout), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    keep = Budget("per-type", layout, 0.5, shape="uniform-heads").final_mask(scores)
    free = Budget("per-type", layout, 0.5).final_mask(scores)
    parts = layout.split(keep)
    assert _per_layer(layout["head"], parts["head"]) == [2, 2, 2]
    assert torch.equal(parts["channel"], layout.split(free)["channel"])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rate,multiple", [(0.3, 2), (0.5, 2), (0.4, 3)])
def test_channel_multiple_is_the_best_mask_of_its_size(seed, rate, multiple):
    widths = [4, 6, 3] if multiple == 3 else [4, 6, 2]
    layout = UnitLayout([_unit_set("channel", widths)])
    scores = torch.rand(len(layout), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    keep = Budget("per-type", layout, rate, channel_multiple=multiple).final_mask(scores)
    n = len(layout)
    kept_total = multiple * round((n - round(rate * n + 1e-9)) / multiple + 1e-9)
    counts = _per_layer(layout["channel"], keep)
    assert all(c % multiple == 0 for c in counts) and sum(counts) == kept_total
    reference = _brute_force(scores, layout["channel"],
                             lambda c: all(x % multiple == 0 for x in c) and sum(c) == kept_total)
    assert torch.equal(keep, reference)


@pytest.mark.parametrize("seed", range(4))
def test_uniform_with_channel_multiple_and_local_budget(seed):
    layout = _layout([2, 2], [6, 6])
    scores = torch.rand(len(layout), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for mode in ("per-type", "local"):
        keep = Budget(mode, layout, 0.4, shape="uniform", channel_multiple=4).final_mask(scores)
        channels = layout.split(keep)["channel"]
        # 6 - round(2.4) = 4 kept per layer, a multiple of 4
        assert _per_layer(layout["channel"], channels) == [4, 4]
        reference = _brute_force(layout.split(scores)["channel"], layout["channel"],
                                 lambda c: c == [4, 4])
        assert torch.equal(channels, reference)


def test_projection_keeps_uniform_kinds_uniform_in_expectation():
    layout = _layout([4, 4, 4], [6, 6, 6])
    z = torch.rand(len(layout), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    s = project(z, Budget("per-type", layout, 0.5, shape="uniform").constraints())
    for kind in ("head", "channel"):
        units, part = layout[kind], layout.split(s)[kind]
        sums = [float(part[units.layer == layer].sum()) for layer in range(3)]
        assert all(total <= len(part) / 6 + 1e-9 for total in sums)  # half of each layer


def test_shape_constraints_refuse_what_they_cannot_honour():
    layout = _layout([2, 2, 2, 2], [4, 4, 4, 4])
    with pytest.raises(ConfigError, match="needs --budget per-type or local"):
        Budget("global", layout, 0.3, shape="uniform")
    with pytest.raises(ConfigError, match="needs --budget per-type or local"):
        Budget("params", layout, 0.3, channel_multiple=2)
    with pytest.raises(ConfigError, match="--protect-layers"):
        Budget("per-type", layout, 0.3, protected_mask(layout, 4, 1, 0), shape="uniform-heads")
    with pytest.raises(ConfigError, match="different numbers of head units"):
        Budget("per-type", _layout([2, 3], [4, 4]), 0.3, shape="uniform")
    # channel_multiple with protection: protected layers keep their width
    keep = Budget("per-type", layout, 0.5, protected_mask(layout, 4, 1, 0),
                  channel_multiple=2).final_mask(torch.rand(len(layout), dtype=torch.float64))
    assert _per_layer(layout["channel"], layout.split(keep)["channel"])[0] == 4
