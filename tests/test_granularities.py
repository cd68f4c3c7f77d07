"""The channel, head and layer granularities: units, costs and how masks enter a forward."""

from __future__ import annotations

import copy

import pytest
import torch

from pgprune_core.model.granularity.layer import LayerGranularity
from pgprune_core.model.masking import apply_masks
from pgprune_core.model.surgery import prune_model

from .conftest import ALL_KINDS, ARCHS

COMBINATIONS = [("channel",), ("head",), ("layer",), ("channel", "head"), ALL_KINDS]


def _logits(setup, ids, row_masks=None):
    with torch.no_grad():
        if row_masks is None:
            return setup.model(ids, use_cache=False).logits
        with apply_masks(setup.structure, setup.layout, setup.granularities, row_masks):
            return setup.model(ids, use_cache=False).logits


def test_registered_as_builtin_plugins(registry):
    for kind in ALL_KINDS:
        spec = registry.get("granularity", kind)
        assert spec.origin.plugin == f"builtin-{kind}"
    assert registry.cls("granularity", "layer").surgery_order > max(
        registry.cls("granularity", k).surgery_order for k in ("channel", "head"))


@pytest.mark.parametrize("arch,tied", ARCHS)
def test_units_are_ordered_by_layer_then_index(make_setup, arch, tied):
    setup = make_setup(arch, tie_word_embeddings=tied)
    structure = setup.structure
    channel, head, layer = (setup.layout[k] for k in ALL_KINDS)
    assert len(channel) == sum(s.mlp.intermediate_size for s in structure.layers)
    assert len(head) == sum(s.attention.n_kv_heads for s in structure.layers)
    assert layer.layer.tolist() == list(range(structure.n_layers))
    for units in (channel, head):
        order = units.layer * 10_000 + units.index
        assert torch.equal(order, torch.sort(order).values)


def test_gqa_head_unit_is_a_kv_group(make_setup):
    setup = make_setup("llama3")
    site = setup.structure.layers[0].attention
    assert (site.n_heads, site.n_kv_heads, site.group_size) == (4, 2, 2)
    assert len(setup.layout["head"]) == 2 * setup.structure.n_layers


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("arch", ["llama", "llama3"])
def test_unit_cost_is_exactly_what_removing_it_saves(make_setup, arch, kind, bias):
    setup = make_setup(arch, kinds=(kind,), attention_bias=bias, mlp_bias=bias)
    units = setup.layout[kind]
    target = int(((units.layer == 1) & (units.index == units.index[units.layer == 1].max())).nonzero())
    keep = torch.ones(len(setup.layout), dtype=torch.bool)
    keep[target] = False
    before = sum(p.numel() for p in setup.model.parameters())
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    after = sum(p.numel() for p in setup.model.parameters())
    assert before - after == int(units.cost[target])


def test_unit_costs_match_hand_computed_formulas(make_setup):
    setup = make_setup("llama3", attention_bias=True)
    hidden, head_dim, group = 32, 8, 2
    channel, head, layer = (setup.layout[k] for k in ALL_KINDS)
    assert int(channel.cost[0]) == 3 * hidden  # gate row + up row + down column
    q_rows = group * head_dim
    expected_head = q_rows * (hidden + 1) + 2 * head_dim * (hidden + 1) + q_rows * hidden
    assert int(head.cost[0]) == expected_head
    assert int(layer.cost[0]) == sum(p.numel() for p in setup.structure.layers[0].module.parameters())


@pytest.mark.parametrize("arch,tied", ARCHS)
def test_all_ones_masks_reproduce_the_dense_model(make_setup, arch, tied):
    full = make_setup(arch, tie_word_embeddings=tied)
    ids = full.ids()
    dense = _logits(full, ids)
    for kinds in COMBINATIONS:
        setup = full.restrict(kinds)
        masked = _logits(setup, ids, torch.ones(ids.shape[0], len(setup.layout)))
        assert (dense - masked).abs().max() <= 1e-5, kinds
        soft = torch.ones(ids.shape[0], len(setup.layout), requires_grad=True)
        assert (dense - _logits(setup, ids, soft)).abs().max() <= 1e-5, kinds


def test_channel_mask_equals_zeroed_down_columns(make_setup):
    setup = make_setup("llama", kinds=("channel",))
    keep = setup.keep(seed=1, rate=0.4)
    reference = copy.deepcopy(setup.model)
    units = setup.layout["channel"]
    with torch.no_grad():
        for layer, index in zip(units.layer[~keep].tolist(), units.index[~keep].tolist(), strict=True):
            reference.model.layers[layer].mlp.down_proj.weight[:, index] = 0
    ids = setup.ids()
    masked = _logits(setup, ids, keep.float().expand(ids.shape[0], -1))
    assert (masked - reference(ids, use_cache=False).logits).abs().max() <= 1e-5
    assert (masked - _logits(setup, ids)).abs().max() > 1e-3  # the mask did something


def test_head_mask_equals_zeroed_output_columns_of_the_whole_group(make_setup):
    setup = make_setup("llama3", kinds=("head",))
    keep = torch.ones(len(setup.layout), dtype=torch.bool)
    keep[1] = False  # layer 0, KV group 1 = query heads 2 and 3
    reference = copy.deepcopy(setup.model)
    with torch.no_grad():
        reference.model.layers[0].self_attn.o_proj.weight[:, 16:32] = 0
    ids = setup.ids()
    masked = _logits(setup, ids, keep.float().expand(ids.shape[0], -1))
    assert (masked - reference(ids, use_cache=False).logits).abs().max() <= 1e-5
    assert (masked - _logits(setup, ids)).abs().max() > 1e-3


def test_layer_mask_equals_the_layer_left_out(make_setup):
    setup = make_setup("llama", kinds=("layer",))
    reference = copy.deepcopy(setup.model)
    del reference.model.layers[2]
    reference.config.num_hidden_layers -= 1
    ids = setup.ids()
    masked = _logits(setup, ids, torch.tensor([[1.0, 1.0, 0.0, 1.0]]).expand(ids.shape[0], -1))
    assert (masked - reference(ids, use_cache=False).logits).abs().max() <= 1e-5


def _count_calls(module, calls, key):
    return module.register_forward_pre_hook(
        lambda mod, args: calls.setdefault(key, []).append(args[0].shape[0]))


def test_a_layer_masked_in_every_row_is_not_computed(make_setup):
    setup = make_setup("llama", kinds=ALL_KINDS)
    calls: dict[int, list[int]] = {}
    hooks = [_count_calls(site.module, calls, site.index) for site in setup.structure.layers]
    masks = torch.ones(3, len(setup.layout))
    masks[:, setup.layout.offsets["layer"].start + 1] = 0  # layer 1 off in every row
    _logits(setup, setup.ids(rows=3), masks)
    for hook in hooks:
        hook.remove()
    assert 1 not in calls
    assert calls[0] == calls[2] == calls[3] == [3]


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_rows_whose_layer_is_masked_are_not_computed_and_rows_stay_independent(make_setup, arch):
    setup = make_setup(arch, kinds=ALL_KINDS)
    ids = setup.ids(rows=2)
    first = setup.keep(seed=2, drop_layers=[1])
    second = setup.keep(seed=3, drop_layers=[2, 3])
    calls: dict[int, list[int]] = {}
    hooks = [_count_calls(site.module, calls, site.index) for site in setup.structure.layers]
    both = _logits(setup, torch.cat([ids, ids]),
                   torch.cat([first.float().expand(2, -1), second.float().expand(2, -1)]))
    for hook in hooks:
        hook.remove()
    assert calls == {0: [4], 1: [2], 2: [2], 3: [2]}
    alone = [_logits(setup, ids, keep.float().expand(2, -1)) for keep in (first, second)]
    assert (both - torch.cat(alone)).abs().max() <= 1e-5


def test_soft_layer_mask_interpolates_between_input_and_output(make_setup):
    setup = make_setup("llama", kinds=("layer",))
    last = setup.structure.layers[-1].module
    seen = {}
    hooks = [
        last.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
        last.register_forward_hook(lambda m, args, out: seen.__setitem__("f", out)),
        setup.model.model.norm.register_forward_pre_hook(
            lambda m, args: seen.__setitem__("out", args[0])),
    ]
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.25]], requires_grad=True)
    with apply_masks(setup.structure, setup.layout, setup.granularities, mask.expand(2, -1)):
        setup.model(setup.ids())
    for hook in hooks:
        hook.remove()
    expected = seen["x"] + 0.25 * (seen["f"] - seen["x"])
    assert (seen["out"] - expected).abs().max() <= 1e-6


def test_rows_of_masks_must_match_the_batch(make_setup):
    setup = make_setup("llama", kinds=("channel",))
    keep = setup.keep(seed=0).float()
    with pytest.raises(ValueError, match="installed for 3 rows"):
        _logits(setup, setup.ids(rows=2), keep.expand(3, -1))


def test_layer_remove_updates_config_and_renumbers_the_kv_cache_index(make_setup):
    setup = make_setup("llama", kinds=("layer",))
    setup.model.config.layer_types = ["full_attention"] * 3 + ["sliding_attention"]
    prune_model(setup.structure, setup.layout, setup.granularities,
                torch.tensor([True, False, True, True]))
    config = setup.model.config
    assert config.num_hidden_layers == 3
    assert config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    assert [layer.self_attn.layer_idx for layer in setup.model.model.layers] == [0, 1, 2]
    assert [site.index for site in setup.structure.layers] == [0, 1, 2]
    assert LayerGranularity().units(setup.structure).layer.tolist() == [0, 1, 2]


@pytest.mark.parametrize("arch", ["llama", "llama3"])
def test_describe_reads_shapes_of_an_already_pruned_model(make_setup, registry, arch):
    setup = make_setup(arch)
    prune_model(setup.structure, setup.layout, setup.granularities,
                setup.keep(seed=4, no_heads=[0], no_channels=[1], drop_layers=[2]))
    again = registry.cls("adapter", setup.adapter_name)().describe_model(setup.model)
    shape = [(s.attention.n_heads, s.attention.n_kv_heads, s.mlp.intermediate_size)
             for s in again.layers]
    assert shape == [(s.attention.n_heads, s.attention.n_kv_heads, s.mlp.intermediate_size)
                     for s in setup.structure.layers]
    assert shape[0][:2] == (0, 0) and shape[1][2] == 0 and len(shape) == 3
