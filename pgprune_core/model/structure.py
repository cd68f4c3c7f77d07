"""A model-agnostic description of where the prunable units of a decoder-only LLM are.

Adapters *describe* a loaded model as sites (one :class:`LayerSite` per decoder layer,
holding its :class:`AttentionSite` and :class:`MlpSite`); granularities turn sites into
:class:`UnitSet` s (one entry per prunable unit, with its exact parameter cost); a
:class:`UnitLayout` concatenates the unit sets into the flat vector that the policy
optimises.  Nothing here knows a particular architecture.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pgprune_core.errors import ModelError


def text_config(config: Any) -> Any:
    """The config of the decoder a model's layers belong to: ``config`` itself for a causal
    LM, its text part (``text_config``) for a model whose decoder sits beside other towers
    (e.g. an image-text model pruned in its language model)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


@dataclass(frozen=True)
class ModuleNames:
    """Attribute names of the blocks inside a layer, as the adapter knows them.

    The defaults are the Hugging Face llama-family convention (LLaMA, Mistral, Qwen2 and
    many others share it); an adapter for another family passes its own.  They are saved
    into a pruned model's config so that the generic modeling file can rebuild the
    per-layer shapes without architecture knowledge of its own.

    ``qkv_proj`` / ``gate_up_proj`` name *fused* projections (Phi-3): one linear layer whose
    output rows are the query, key and value rows (in that order), or the gate rows then
    the up rows.  When set, the separate names of those projections are not used.
    """

    layers: str = "model.layers"
    attention: str = "self_attn"
    mlp: str = "mlp"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    qkv_proj: str | None = None
    gate_up_proj: str | None = None
    #: mixture-of-experts models: the sparse block (a path inside the layer), its router
    #: and its experts (attributes of the block); unused by dense models
    moe: str = "mlp"
    router: str = "gate"
    experts: str = "experts"

    def as_dict(self) -> dict[str, str | None]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RowBlock:
    """A block of output rows of a linear layer that one projection owns: all rows of a
    separate ``q_proj``, or rows ``start .. start + size - 1`` of a fused ``qkv_proj``."""

    linear: nn.Linear
    start: int
    size: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + self.size)


def row_blocks(linears: Sequence[nn.Linear], sizes: Sequence[int]) -> list[RowBlock]:
    """One block per projection: ``linears[i]`` (the same module repeated when the
    projections are fused) owns ``sizes[i]`` rows, laid out one after another inside it."""
    blocks: list[RowBlock] = []
    offsets: dict[int, int] = {}
    for linear, size in zip(linears, sizes, strict=True):
        start = offsets.get(id(linear), 0)
        blocks.append(RowBlock(linear, start, size))
        offsets[id(linear)] = start + size
    return blocks


@dataclass
class AttentionSite:
    """One attention block: projections and head geometry.  Units are KV groups: one KV
    head and the ``n_heads // n_kv_heads`` query heads that share it (plain heads under MHA).

    With a fused ``qkv_proj``, ``q_proj``, ``k_proj`` and ``v_proj`` are that one module;
    :meth:`qkv_blocks` says which of its rows each projection owns."""

    layer: int
    module: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_proj: nn.Linear | None = None

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads if self.n_kv_heads else 0

    def qkv_blocks(self) -> list[RowBlock]:
        """The query, key and value rows, in that order (row ``h * head_dim + i`` of a block
        is feature ``i`` of its head ``h``)."""
        kv = self.n_kv_heads * self.head_dim
        return row_blocks((self.q_proj, self.k_proj, self.v_proj),
                          (self.n_heads * self.head_dim, kv, kv))


@dataclass
class MlpSite:
    """One gated MLP: ``down(act(gate(x)) * up(x))`` with ``intermediate_size`` channels.
    With a fused ``gate_up_proj``, ``gate_proj`` and ``up_proj`` are that one module."""

    layer: int
    module: nn.Module
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    intermediate_size: int
    gate_up_proj: nn.Linear | None = None

    def gate_up_blocks(self) -> list[RowBlock]:
        """The gate rows, then the up rows (row ``j`` of each block is channel ``j``)."""
        return row_blocks((self.gate_proj, self.up_proj),
                          (self.intermediate_size, self.intermediate_size))


@dataclass
class ExpertSite:
    """The routed experts of one sparse (mixture-of-experts) block.

    ``router.weight`` is ``[n_experts, hidden]`` (one row of router logits per expert); every
    parameter of ``experts`` named in ``expert_params`` has the experts on its first
    dimension (transformers' fused ``gate_up_proj`` / ``down_proj``).  The router sends each
    token to the ``top_k`` experts of largest softmax probability and, when ``renormalise``,
    divides their weights by their sum.  A shared expert is not a routed expert: it is no
    part of this site.
    """

    layer: int
    module: nn.Module
    router: nn.Module
    experts: nn.Module
    n_experts: int
    top_k: int
    renormalise: bool
    expert_params: tuple[str, ...] = ("gate_up_proj", "down_proj")

    def expert_cost(self) -> int:
        """Parameters one expert owns: its slice of every expert parameter and its router
        row (and router bias entry, when the router has a bias)."""
        params = dict(self.experts.named_parameters(recurse=False))
        cost = sum(params[name][0].numel() for name in self.expert_params)
        router = dict(self.router.named_parameters(recurse=False))
        cost += int(router["weight"].shape[1])
        return cost + int("bias" in router)


@dataclass
class LayerSite:
    """One decoder layer (residual block pair).  ``mlp`` is the dense gated MLP (``None``
    when the layer has none: a sparse block without a shared expert); ``experts`` the routed
    experts of a mixture-of-experts layer (``None`` in dense layers)."""

    index: int
    module: nn.Module
    attention: AttentionSite
    mlp: MlpSite | None
    experts: ExpertSite | None = None

    def dense_mlp(self) -> MlpSite:
        """The layer's dense MLP; a one-line error for a layer that has none."""
        if self.mlp is None:
            raise ModelError(f"layer {self.index} has no dense MLP (a mixture-of-experts "
                             f"layer without a shared expert): its units are experts")
        return self.mlp

    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@dataclass
class ModelStructure:
    """What an adapter knows about a model: its layers, names and the list holding them."""

    model: nn.Module
    layers: list[LayerSite]
    layer_list: nn.ModuleList
    hidden_size: int
    names: ModuleNames = field(default_factory=ModuleNames)
    architecture: str = "llama"

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@dataclass
class UnitSet:
    """The units of one granularity (``kind``): per unit, its layer, its index inside the
    layer (channel, KV group or expert number; 0 for a layer unit) and its exact parameter
    cost."""

    kind: str
    layer: torch.Tensor  # int64 [n]
    index: torch.Tensor  # int64 [n]
    cost: torch.Tensor  # int64 [n]
    #: layer -> the fewest units of this kind the layer must keep (the budget honours it:
    #: a mixture-of-experts layer keeps at least its router's top-k experts)
    min_kept: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.layer.numel()
        if self.index.numel() != n or self.cost.numel() != n:
            raise ValueError(f"UnitSet {self.kind!r}: layer/index/cost lengths differ")

    def __len__(self) -> int:
        return int(self.layer.numel())


@dataclass
class UnitLayout:
    """Unit sets concatenated in a fixed order: the index space of the policy vector ``s``."""

    sets: list[UnitSet]

    def __post_init__(self) -> None:
        kinds = [u.kind for u in self.sets]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"a granularity appears twice: {kinds}")
        self.offsets: dict[str, slice] = {}
        start = 0
        for unit_set in self.sets:
            self.offsets[unit_set.kind] = slice(start, start + len(unit_set))
            start += len(unit_set)
        self.size = start

    @property
    def kinds(self) -> list[str]:
        return [u.kind for u in self.sets]

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[UnitSet]:
        return iter(self.sets)

    def __getitem__(self, kind: str) -> UnitSet:
        for unit_set in self.sets:
            if unit_set.kind == kind:
                return unit_set
        raise KeyError(kind)

    def cat(self, attr: str) -> torch.Tensor:
        """``layer``, ``index`` or ``cost`` of every unit, in layout order."""
        if not self.sets:
            return torch.zeros(0, dtype=torch.int64)
        return torch.cat([getattr(u, attr) for u in self.sets])

    @property
    def cost(self) -> torch.Tensor:
        return self.cat("cost")

    @property
    def layer(self) -> torch.Tensor:
        return self.cat("layer")

    def kind_ids(self) -> torch.Tensor:
        """int64 [n]: position of each unit's kind in :attr:`kinds`."""
        return torch.cat(
            [torch.full((len(u),), i, dtype=torch.int64) for i, u in enumerate(self.sets)]
        ) if self.sets else torch.zeros(0, dtype=torch.int64)

    def split(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a ``[..., n]`` tensor into ``{kind: [..., n_kind]}`` views."""
        if vector.shape[-1] != self.size:
            raise ValueError(f"expected last dimension {self.size}, got {vector.shape[-1]}")
        return {kind: vector[..., sl] for kind, sl in self.offsets.items()}

    def join(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        return torch.cat([parts[kind] for kind in self.kinds], dim=-1)

    def protected(self, layers: Sequence[int]) -> torch.Tensor:
        """bool [n]: the units that lie in one of ``layers``."""
        if not layers:
            return torch.zeros(self.size, dtype=torch.bool)
        return torch.isin(self.layer, torch.tensor(sorted(set(layers)), dtype=torch.int64))
