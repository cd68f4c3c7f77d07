"""The forward that leaves pruned units uncomputed equals the masked forward, and is used
only where it may be."""

from __future__ import annotations

import pytest
import torch

from pgprune_core.model import sparse_forward
from pgprune_core.model.masking import LossOracle, apply_masks
from pgprune_core.model.sparse_forward import SkippingAttention, SkippingMlp

from .conftest import logits


def _stand_ins(setup):
    """The stand-ins installed in the model right now, by type name."""
    return sorted(type(m).__name__ for m in setup.model.modules()
                  if isinstance(m, (SkippingMlp, SkippingAttention)))


def _forward(setup, ids, row_masks, mode):
    seen = []
    with apply_masks(setup.structure, setup.layout, setup.granularities, row_masks, mode):
        seen = _stand_ins(setup)
        out = logits(setup.model, ids)
    return out, seen


def _row_masks(setup, n_masks, rows_per_mask):
    """Per mask a random keep-vector (layer 0 without heads and layer 1 without channels in
    mask 0, everything kept in the last mask), repeated mask-major over its rows."""
    keeps = [setup.keep(seed=0, rate=0.5, no_heads=[0], no_channels=[1])]
    keeps += [setup.keep(seed=s, rate=0.5) for s in range(1, n_masks - 1)]
    keeps.append(torch.ones(len(setup.layout), dtype=torch.bool))
    return torch.stack(keeps).float().repeat_interleave(rows_per_mask, dim=0)


@pytest.mark.parametrize("arch", ["llama", "llama3", "mistral"])
@pytest.mark.parametrize("kinds", [("channel", "head"), ("channel", "head", "layer")],
                         ids="+".join)
def test_per_row_masks_equal_the_masked_forward(make_setup, arch, kinds):
    setup = make_setup(arch, kinds=kinds)
    ids = setup.ids(rows=8, length=10)
    rows = _row_masks(setup, 4, 2)
    if "layer" in kinds:  # mask 1 drops layer 2: its rows skip the layer altogether
        rows[2:4, setup.layout.offsets["layer"].start + 2] = 0
    masked, none = _forward(setup, ids, rows, "off")
    skipped, used = _forward(setup, ids, rows, "on")
    assert none == []
    assert used.count("SkippingMlp") == used.count("SkippingAttention") == 4
    assert (masked - logits(setup.model, ids)).abs().max() > 1e-2  # the masks bite
    torch.testing.assert_close(skipped, masked, rtol=0, atol=1e-5)


def test_a_mask_without_heads_or_channels_anywhere_gives_the_masked_logits(make_setup):
    setup = make_setup("llama3", kinds=("channel", "head"))
    ids = setup.ids(rows=4)
    rows = torch.stack([torch.zeros(len(setup.layout)), torch.ones(len(setup.layout))])
    rows = rows.repeat_interleave(2, dim=0)
    masked, _ = _forward(setup, ids, rows, "off")
    skipped, used = _forward(setup, ids, rows, "on")
    assert len(used) == 8
    torch.testing.assert_close(skipped, masked, rtol=0, atol=1e-5)


def test_whole_block_kinds_fold_into_the_units_they_remove(make_setup):
    """The mlp and attention kinds beside channels and heads: a block masked off in a row
    keeps none of its units there."""
    setup = make_setup("llama3", kinds=("channel", "head", "mlp", "attention"))
    ids = setup.ids(rows=6)
    keeps = torch.stack([setup.keep(seed=s, rate=0.4) for s in range(3)]).float()
    keeps[0, setup.layout.offsets["mlp"].start + 1] = 0
    keeps[1, setup.layout.offsets["attention"].start + 2] = 0
    rows = keeps.repeat_interleave(2, dim=0)
    masked, _ = _forward(setup, ids, rows, "off")
    skipped, used = _forward(setup, ids, rows, "on")
    assert len(used) == 8
    torch.testing.assert_close(skipped, masked, rtol=0, atol=1e-5)


def test_the_oracle_losses_are_unchanged(make_setup):
    """Every mode and chunks that cut through a mask's rows give the masked losses."""
    setup = make_setup("llama3")
    batch = setup.ids(rows=3, length=12)
    masks = torch.stack([setup.keep(seed=s, rate=0.5, drop_layers=[s]) for s in range(3)])
    reference = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities,
                           skip_pruned="off").losses(batch, masks.float())
    for mode, max_rows in (("on", None), ("on", 4), ("auto", None)):
        oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities,
                            skip_pruned=mode, max_rows=max_rows)
        assert (oracle.losses(batch, masks) - reference).abs().max() <= 1e-5, (mode, max_rows)


def test_soft_masks_take_the_masked_path_and_get_gradients(make_setup):
    setup = make_setup("llama3", kinds=("channel", "head"))
    batch = setup.ids(rows=2)
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities,
                        skip_pruned="on")
    hard = setup.keep(seed=1, rate=0.5).float()[None]
    for soft in (hard.clone().requires_grad_(True), torch.full_like(hard, 0.6)):
        with apply_masks(setup.structure, setup.layout, setup.granularities,
                         soft.expand(2, -1), "on"):
            assert _stand_ins(setup) == []
    soft = hard.clone().requires_grad_(True)
    oracle.loss(batch, soft).sum().backward()
    reference = hard.clone().requires_grad_(True)
    LossOracle(setup.model, setup.structure, setup.layout, setup.granularities,
               skip_pruned="off").loss(batch, reference).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    torch.testing.assert_close(soft.grad, reference.grad, rtol=0, atol=1e-6)


def test_auto_skips_only_where_it_pays(make_setup, monkeypatch):
    setup = make_setup("llama", kinds=("channel", "head"))
    ids = setup.ids(rows=2)
    rows = setup.keep(seed=0, rate=0.5).float().expand(2, -1)
    # the tiny model's blocks are below the size at which skipping pays
    assert _forward(setup, ids, rows, "auto")[1] == []
    monkeypatch.setattr(sparse_forward, "AUTO_MIN_WEIGHTS", 0)
    assert len(_forward(setup, ids, rows, "auto")[1]) == 8
    # a block that keeps more than AUTO_MAX_KEEP of its units is masked
    nearly = torch.ones(len(setup.layout))
    nearly[setup.layout.offsets["channel"].start] = 0  # one channel of layer 0
    assert _forward(setup, ids, nearly.expand(2, -1), "auto")[1] == []
    assert _forward(setup, ids, nearly.expand(2, -1), "on")[1] == ["SkippingMlp"]


def test_blocks_are_restored_on_exit_and_on_error(make_setup):
    setup = make_setup("llama", kinds=("channel", "head"))
    before = [(site.module.mlp, site.module.self_attn) for site in setup.structure.layers]
    rows = setup.keep(seed=0, rate=0.5).float()[None]
    with pytest.raises(RuntimeError, match="boom"), apply_masks(
            setup.structure, setup.layout, setup.granularities, rows, "on"):
        assert len(_stand_ins(setup)) == 8
        raise RuntimeError("boom")
    assert [(site.module.mlp, site.module.self_attn) for site in setup.structure.layers] == before
    assert _stand_ins(setup) == []


def test_a_kv_cache_runs_the_blocks_whole_with_their_masks(make_setup, monkeypatch):
    """Arguments that cannot be split by rows (a KV cache): the block runs masked."""
    whole = []
    masked = sparse_forward._SkippingBlock._masked

    def spy(self, args, kwargs):
        whole.append(type(self).__name__)
        return masked(self, args, kwargs)

    monkeypatch.setattr(sparse_forward._SkippingBlock, "_masked", spy)
    setup = make_setup("mistral", kinds=("channel", "head"))
    ids = setup.ids(rows=4)
    rows = torch.stack([setup.keep(seed=s, rate=0.5) for s in range(2)]).float()
    rows = rows.repeat_interleave(2, dim=0)
    outputs = {}
    for mode in ("off", "on"):
        with torch.no_grad(), apply_masks(setup.structure, setup.layout, setup.granularities,
                                          rows, mode):
            outputs[mode] = setup.model(ids, use_cache=True).logits
    assert whole == ["SkippingAttention"] * 4  # the MLPs, which get no cache, still skip
    torch.testing.assert_close(outputs["on"], outputs["off"], rtol=0, atol=1e-5)


def test_an_unknown_granularity_makes_the_whole_forward_masked(make_setup, registry):
    import dataclasses

    from pgprune_core.interfaces import Granularity
    from pgprune_core.model.granularity.channel import ChannelGranularity
    from pgprune_core.model.structure import UnitLayout

    class ScaledChannels(Granularity):
        """A kind of this module's own that masks the MLPs' inputs to down_proj."""

        name = "scaled"

        def units(self, structure):
            return dataclasses.replace(ChannelGranularity().units(structure), kind="scaled")

        def install(self, structure, units, row_masks):
            return ChannelGranularity().install(structure, units, row_masks)

        def remove(self, structure, units, keep):
            raise NotImplementedError

    setup = make_setup("llama", kinds=("head",))
    granularities = {"head": setup.granularities["head"], "scaled": ScaledChannels()}
    layout = UnitLayout([g.units(setup.structure) for g in granularities.values()])
    rows = (torch.rand(2, len(layout), generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with apply_masks(setup.structure, layout, granularities, rows, "on"):
        assert _stand_ins(setup) == []
    with apply_masks(setup.structure, setup.layout, setup.granularities, rows[:, :16], "on"):
        assert len(_stand_ins(setup)) == 4  # the head kind alone skips


def test_an_unknown_mode_is_refused(make_setup):
    setup = make_setup("llama", kinds=("channel",))
    with pytest.raises(ValueError, match="unknown skip_pruned mode 'fast'"):
        LossOracle(setup.model, setup.structure, setup.layout, setup.granularities,
                   skip_pruned="fast")
