"""The checks every model adapter must pass, as one parametrised test class.

An adapter distribution's test module subclasses :class:`AdapterSuite`, names its adapter,
its distribution and a few tiny configurations (transformers config objects with the
architecture's features switched on), and pytest runs every check for every configuration
and every combination of granularities::

    from transformers import Qwen2Config
    from pgprune_core.testing.adapter_suite import AdapterSuite, tiny_decoder

    class TestQwen2(AdapterSuite):
        adapter = "qwen2"
        distribution = "pgprune-qwen2"
        variants = {"gqa-sliding": lambda: tiny_decoder(Qwen2Config, use_sliding_window=True,
                                                        sliding_window=8, max_window_layers=2)}

The checks (fp32, random weights, biases and norms perturbed so that a wrongly cut bias or
norm shows):

- the adapter is registered by the distribution and resolved from a saved ``config.json``;
  without the distribution, the error names it;
- all-ones masks (hard, and soft ones that install every hook) give the dense logits;
- the forward that skips pruned units gives the masked forward's logits for per-row masks;
- the parameter entries the initializers attribute to a unit are those cutting it removes;
- surgery's logits equal the masked model's for a random keep-vector (a layer without
  heads, a layer without channels, layer 0 dropped), every parameter outside the cut
  projections is unchanged, per-layer attention types follow the kept layers, and the
  parameters surgery removes equal :func:`~pgprune_core.model.accounting.removed_params`;
- the saved model loads through :func:`pgprune_core.load_pruned` and through
  ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` with the same
  logits, and greedy generation with the KV cache equals the in-memory pruned model's
  (itself equal with and without the cache).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from pgprune_core.model.structure import text_config
from pgprune_core.testing import random_model

#: the size of the suite's tiny models: 4 layers, hidden 32, 4 heads over 2 KV heads
TINY_DECODER: dict[str, Any] = dict(
    vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_decoder(config_class: Any, **overrides: Any) -> Any:
    """``config_class`` (a transformers config class) at :data:`TINY_DECODER`'s size, with
    ``overrides`` (the family's features) applied on top."""
    return config_class(**{**TINY_DECODER, **overrides})


#: the granularity combinations every check runs over
KIND_COMBINATIONS: tuple[tuple[str, ...], ...] = (
    ("channel",), ("head",), ("layer",), ("channel", "head", "layer"))
#: attributes of an attention block or decoder layer that say what kind of layer it is
LAYER_KIND_ATTRIBUTES = ("layer_type", "attention_type", "sliding_window", "is_sliding")


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _greedy(model: Any, ids: torch.Tensor, n: int, use_cache: bool) -> torch.Tensor:
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          use_cache=use_cache, pad_token_id=0)


def _layer_kinds(layer: nn.Module, attention: nn.Module) -> dict[str, Any]:
    return {f"{where}.{name}": getattr(module, name)
            for where, module in (("layer", layer), ("attention", attention))
            for name in LAYER_KIND_ATTRIBUTES if hasattr(module, name)}


class TinyCase:
    """A tiny model of one variant with its structure, granularities and unit layout, to
    mask, cut and save."""

    def __init__(self, suite: AdapterSuite, variant: str, kinds: Sequence[str],
                 registry: Any) -> None:
        from pgprune_core.model.structure import UnitLayout

        self.config = suite.variants[variant]()
        self.model = random_model(self.config)
        self.adapter = registry.cls("adapter", suite.adapter)()
        self.structure = self.adapter.describe_model(self.model)
        self.granularities = {kind: registry.cls("granularity", kind)() for kind in kinds}
        self.layout = UnitLayout([g.units(self.structure) for g in self.granularities.values()])
        generator = torch.Generator().manual_seed(1)
        self.text_config = text_config(self.model.config)
        self.ids = torch.randint(3, self.text_config.vocab_size, (2, 12), generator=generator)

    def keep(self) -> torch.Tensor:
        """Random units dropped (30 %); layer 1 loses every head, layer 2 every channel,
        layer 0 is dropped (so layers after it move up)."""
        keep = torch.rand(len(self.layout), generator=torch.Generator().manual_seed(2)) >= 0.3
        parts = self.layout.split(keep)
        for kind, layer in (("head", 1), ("channel", 2)):
            if kind in parts:
                parts[kind][self.layout[kind].layer == layer] = False
        if "layer" in parts:
            parts["layer"][:] = True
            parts["layer"][0] = False
        return self.layout.join(parts)

    def masked_logits(self, row_masks: torch.Tensor, skip_pruned: str = "off") -> torch.Tensor:
        """The logits under ``row_masks``: one row for every sequence, or one per sequence."""
        from pgprune_core.model.masking import apply_masks

        rows = row_masks.expand(self.ids.shape[0], -1)
        with torch.no_grad(), apply_masks(self.structure, self.layout, self.granularities, rows,
                                          skip_pruned):
            return self.model(self.ids, use_cache=False).logits

    def projection_names(self) -> set[str]:
        names = self.structure.names.as_dict()
        return {value for key, value in names.items()
                if value and key not in ("layers", "attention", "mlp")}

    def unit_free_parameters(self) -> list[dict[str, torch.Tensor]]:
        """Per layer, the parameters no unit cuts into (norms, per-head norms, ...)."""
        projections = self.projection_names()
        return [{name: param.detach().clone() for name, param in site.module.named_parameters()
                 if not projections & set(name.split(".")[:-1])}
                for site in self.structure.layers]

    def layer_kinds(self) -> list[dict[str, Any]]:
        return [_layer_kinds(site.module, site.attention.module) for site in self.structure.layers]


class AdapterSuite:
    """Subclass it as ``Test<Architecture>`` and set the three class attributes."""

    #: the adapter's registered name
    adapter: ClassVar[str]
    #: the distribution that registers it
    distribution: ClassVar[str]
    #: name -> a function returning a tiny transformers config (2-4 layers, hidden <= 64,
    #: vocab <= 512; at least 3 layers so that layers 0-2 can lose different units)
    variants: ClassVar[dict[str, Callable[[], Any]]]
    #: new tokens generated after a 5-token prompt (beyond a small sliding window)
    new_tokens: ClassVar[int] = 20

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "variant" in metafunc.fixturenames:
            metafunc.parametrize("variant", list(self.variants))
        if "kinds" in metafunc.fixturenames:
            metafunc.parametrize("kinds", KIND_COMBINATIONS, ids="+".join)

    # -- registration and resolution ---------------------------------------------------
    def test_registered_by_its_distribution(self, registry: Any) -> None:
        spec = registry.get("adapter", self.adapter)
        assert spec.origin.distribution == self.distribution

    def test_resolved_from_config_json(self, variant: str, registry: Any, tmp_path: Any) -> None:
        from pgprune_core.model.hf_adapter import resolve_adapter
        from pgprune_core.plugin.registry import ADAPTER_FOR_MODEL_TYPE, PROVIDED_BY

        config = self.variants[variant]()
        config.save_pretrained(tmp_path)  # the config alone: resolution reads no weights
        assert resolve_adapter(str(tmp_path), registry=registry) == self.adapter
        assert ADAPTER_FOR_MODEL_TYPE[config.model_type] == self.adapter
        assert PROVIDED_BY[("adapter", self.adapter)] == self.distribution

    def test_missing_distribution_is_named(self, variant: str, registry: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """Without this distribution, a model of its type fails in one line that says which
        distribution to install."""
        from pgprune_core.errors import MissingPluginError
        from pgprune_core.model.hf_adapter import adapter_for_config
        from pgprune_core.plugin.registry import PluginSet, Registry

        monkeypatch.setenv("PGPRUNE_DISABLE_PLUGINS", registry.get("adapter", self.adapter).origin.plugin)
        with pytest.raises(MissingPluginError, match=f"distribution {self.distribution}") as info:
            adapter_for_config(self.variants[variant](), Registry(PluginSet()))
        assert "\n" not in str(info.value)

    # -- masking ------------------------------------------------------------------------
    def test_all_ones_masks_give_the_dense_logits(self, variant: str, kinds: Sequence[str],
                                                  registry: Any) -> None:
        setup = TinyCase(self, variant, kinds, registry)
        dense = _logits(setup.model, setup.ids)
        ones = torch.ones(1, len(setup.layout))
        assert torch.equal(setup.masked_logits(ones), dense)  # nothing installed: bit-exact
        soft = ones.clone().requires_grad_(True)  # soft masks install every hook and layer
        torch.testing.assert_close(setup.masked_logits(soft), dense, rtol=0, atol=1e-5)

    def test_unit_parameter_maps_are_what_surgery_cuts(self, variant: str, registry: Any) -> None:
        """Per unit, the entries the initializers reduce (here: the sum of squares) are the
        entries that cutting the unit alone removes (fused projections too)."""
        from pgprune_core.initializers.unit_params import gather_units, layer_unit_sums
        from pgprune_core.model.structure import UnitLayout

        def squares(model: Any) -> float:
            return float(sum(p.detach().double().square().sum() for p in model.parameters()))

        setup = TinyCase(self, variant, ("channel", "head"), registry)
        for kind, granularity in setup.granularities.items():
            unit_set = setup.layout[kind]
            scores = gather_units(setup.structure, unit_set,
                                  functools.partial(layer_unit_sums, kind=kind, values=torch.square))
            for position in (1, len(unit_set) - 2):
                model = copy.deepcopy(setup.model)
                structure = setup.adapter.describe_model(model)
                keep = torch.ones(len(unit_set), dtype=torch.bool)
                keep[position] = False
                granularity.remove(structure, UnitLayout([granularity.units(structure)])[kind],
                                   keep)
                removed = squares(setup.model) - squares(model)
                assert abs(removed - float(scores[position])) <= 1e-6 * max(1.0, removed), kind

    def test_skipping_forward_equals_the_masked_forward(self, variant: str, kinds: Sequence[str],
                                                         registry: Any) -> None:
        """Per-row hard masks (one row's layer 1 without heads and layer 2 without
        channels, one row keeping everything): the forward that leaves pruned units
        uncomputed gives the masked forward's logits."""
        setup = TinyCase(self, variant, kinds, registry)
        rows = torch.stack([setup.keep(), torch.ones(len(setup.layout), dtype=torch.bool)])
        rows = rows.float()
        masked = setup.masked_logits(rows)
        skipped = setup.masked_logits(rows, skip_pruned="on")
        torch.testing.assert_close(skipped, masked, rtol=0, atol=1e-5)

    # -- surgery ------------------------------------------------------------------------
    def test_surgery_equals_masking_and_accounting(self, variant: str, kinds: Sequence[str],
                                                   registry: Any) -> None:
        from pgprune_core.model.accounting import removed_params
        from pgprune_core.model.surgery import prune_model

        setup = TinyCase(self, variant, kinds, registry)
        keep = setup.keep()
        masked = setup.masked_logits(keep.float()[None])
        assert (masked - _logits(setup.model, setup.ids)).abs().max() > 1e-3  # the mask bites
        free, layer_kinds = setup.unit_free_parameters(), setup.layer_kinds()
        types = list(getattr(setup.text_config, "layer_types", None) or [])
        before = sum(p.numel() for p in setup.model.parameters())
        summary = prune_model(setup.structure, setup.layout, setup.granularities, keep)
        after = sum(p.numel() for p in setup.model.parameters())
        torch.testing.assert_close(_logits(setup.model, setup.ids), masked, rtol=0, atol=1e-4)
        assert before - after == removed_params(setup.layout, keep) == summary["params_removed"]
        kept = setup.model.config.pgprune["original_layers"]
        assert kept == list(range(1 if "layer" in kinds else 0, len(free)))
        assert setup.layer_kinds() == [layer_kinds[i] for i in kept]
        if types:
            assert setup.text_config.layer_types == [types[i] for i in kept]
        for now, original in zip(setup.unit_free_parameters(), (free[i] for i in kept), strict=True):
            assert now.keys() == original.keys()
            for name, value in now.items():
                assert torch.equal(value, original[name]), name

    # -- saving, loading, generating ------------------------------------------------------
    def test_saved_model_loads_and_generates(self, variant: str, kinds: Sequence[str],
                                             registry: Any, tmp_path: Any) -> None:
        from transformers import AutoModelForCausalLM

        from pgprune_core import load_pruned
        from pgprune_core.model.surgery import prune_model, save_pruned

        setup = TinyCase(self, variant, kinds, registry)
        prune_model(setup.structure, setup.layout, setup.granularities, setup.keep())
        model = setup.model
        path = save_pruned(model, None, tmp_path / "pruned", adapter_name=self.adapter,
                           base_model=f"tiny-{variant}")
        expected = _logits(model, setup.ids)
        prompt = setup.ids[:, :5]
        greedy = _greedy(model, prompt, self.new_tokens, use_cache=True)
        assert torch.equal(greedy, _greedy(model, prompt, self.new_tokens, use_cache=False))
        n_params = sum(p.numel() for p in model.parameters())
        for reloaded in (load_pruned(path),
                         AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()):
            torch.testing.assert_close(_logits(reloaded, setup.ids), expected, rtol=0, atol=1e-5)
            assert sum(p.numel() for p in reloaded.parameters()) == n_params
            assert getattr(text_config(reloaded.config), "layer_types", None) == getattr(
                setup.text_config, "layer_types", None)
            structure = setup.adapter.describe_model(reloaded)
            assert [_layer_kinds(s.module, s.attention.module) for s in structure.layers] == \
                setup.layer_kinds()
            tied = reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
            assert tied == bool(model.config.tie_word_embeddings)
            assert torch.equal(_greedy(reloaded, prompt, self.new_tokens, use_cache=True), greedy)
