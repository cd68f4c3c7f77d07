"""Fixtures for the model-side tests (granularities, masking, surgery): a tiny model described
by its registered adapter, with granularities and their unit layout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from pgprune_core.interfaces import Granularity
from pgprune_core.model.structure import ModelStructure, UnitLayout
from pgprune_core.testing import tiny_model

#: (tiny architecture, tied embeddings): LLaMA-2-like MHA untied, LLaMA-3-like GQA with
#: llama3 rope scaling and tied embeddings, Mistral GQA with a sliding window
ARCHS = [("llama", False), ("llama3", True), ("mistral", False)]
ALL_KINDS = ("channel", "head", "layer")


@dataclass
class Setup:
    """A tiny model ready to be masked or pruned."""

    model: nn.Module
    adapter_name: str
    structure: ModelStructure
    granularities: dict[str, Granularity]
    layout: UnitLayout

    def keep(self, seed: int = 0, rate: float = 0.3, *, no_heads: Sequence[int] = (),
             no_channels: Sequence[int] = (), drop_layers: Sequence[int] | None = None) -> torch.Tensor:
        """A random keep-vector (each unit dropped with probability ``rate``); the layers in
        ``no_heads`` / ``no_channels`` lose all their heads / channels; ``drop_layers`` (when
        given) fixes which layers are dropped."""
        generator = torch.Generator().manual_seed(seed)
        keep = torch.rand(len(self.layout), generator=generator) >= rate
        parts = self.layout.split(keep)
        for kind, layers in (("head", no_heads), ("channel", no_channels)):
            if layers and kind in parts:
                parts[kind][torch.isin(self.layout[kind].layer, torch.tensor(list(layers)))] = False
        if drop_layers is not None and "layer" in parts:
            parts["layer"][:] = True
            parts["layer"][list(drop_layers)] = False
        return self.layout.join(parts)

    def restrict(self, kinds: Sequence[str]) -> Setup:
        """The same model with only the granularities ``kinds`` (a layout of their own)."""
        granularities = {kind: self.granularities[kind] for kind in kinds}
        layout = UnitLayout([self.layout[kind] for kind in kinds])
        return Setup(self.model, self.adapter_name, self.structure, granularities, layout)

    def ids(self, rows: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(3, self.model.config.vocab_size, (rows, length), generator=generator)


@pytest.fixture
def make_setup(registry: Any) -> Callable[..., Setup]:
    """``make_setup("llama3", kinds=("channel", "head"), tie_word_embeddings=True)``."""

    def make(arch: str = "llama", kinds: Sequence[str] = ALL_KINDS, *, seed: int = 0,
             **config: Any) -> Setup:
        model = tiny_model(arch, seed=seed, **config)  # type: ignore[arg-type]
        adapter_name = "mistral" if arch == "mistral" else "llama"
        structure = registry.cls("adapter", adapter_name)().describe_model(model)
        granularities = {kind: registry.cls("granularity", kind)() for kind in kinds}
        layout = UnitLayout([g.units(structure) for g in granularities.values()])
        return Setup(model, adapter_name, structure, granularities, layout)

    return make


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``ids`` without a cache, no gradients."""
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def masked_logits(setup: Setup, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The logits with ``keep`` (bool [n]) installed as the mask of every row."""
    from pgprune_core.model.masking import apply_masks

    with apply_masks(setup.structure, setup.layout, setup.granularities,
                     keep.float().expand(ids.shape[0], -1)):
        return logits(setup.model, ids)
