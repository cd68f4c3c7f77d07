"""Skipping the compute of pruned units in the batched masked forward.

The masked forward (:func:`pgprune_core.model.masking.apply_masks`) multiplies the input of
``down_proj`` / ``o_proj`` by each row's mask: exact, differentiable in soft masks, but every
row pays for every channel and head, so ``N`` masks cost ``N`` dense forwards whatever the
prune rate.  With *hard* masks (0/1, no gradient wanted) a row's pruned channels and KV
groups contribute nothing, so they need not be computed at all.

For the duration of the masking, every MLP and attention block that prunes something in
some row is replaced in its parent by a stand-in (:class:`SkippingMlp`,
:class:`SkippingAttention`; the original module is untouched and put back on exit).  The
stand-in splits its input rows into runs of consecutive rows that keep the same units
(rows are mask-major: the rows of one sampled mask are contiguous, and neighbouring masks
that agree on the block share a run) and runs the original block once per run with only
the kept units' weights, gathered for that call and dropped after it
(``torch.func.functional_call`` swaps them in):

- MLP, channels ``c`` kept: rows ``c`` of ``gate_proj`` and ``up_proj`` (of both halves of a
  fused ``gate_up_proj``, with their bias entries) and columns ``c`` of ``down_proj``;
- attention, KV groups ``g`` kept: the q rows of their query heads, the k and v rows of
  their KV heads (blocks of a fused ``qkv_proj`` alike; biases likewise), the o columns of
  their query heads, and for the call the block's head counts narrowed as surgery narrows
  them (for forwards that read them, e.g. to split a fused projection).  A group keeps its
  ``n_heads / n_kv_heads`` query heads, so the GQA repeat factor is unchanged; per-head
  norms (Qwen3, Gemma 3 ``q_norm`` / ``k_norm``) and the rotary embedding act per head and
  are shared by all heads.

A run that keeps every unit calls the block as it is; a run that keeps none returns the
output projection's bias (or zeros) without calling it.  Whole-block kinds (``mlp``,
``attention``) fold into the same keep matrices (a block masked off keeps no unit); the
``layer`` and ``expert`` kinds install as in the masked forward, and the stand-ins pick
their mask rows like the masked hooks do when the layer kind computes only some rows.

This is the masked forward computed differently (equal within fp32 rounding) and is used
only where it cannot change anything else: hard masks (soft or ``requires_grad`` masks,
Gumbel-softmax's, always take the masked path so that gradients reach them), granularities
this module knows (any other kind installed makes the whole forward masked), blocks whose
projections it can find inside them.  A block called with arguments it cannot split by
rows (a KV cache) runs whole with its mask applied as in the masked forward.

``skip_pruned`` modes: ``off`` (always mask), ``on`` (skip in every block that prunes a
unit), ``auto`` (skip where it pays: at most :data:`AUTO_MAX_KEEP` of the block's units
kept over the rows, and at least :data:`AUTO_MIN_WEIGHTS` weights in its projections;
gathering costs a copy of the kept weights and one call per run, which a nearly dense or a
tiny block does not win back).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.model.granularity.attention import AttentionGranularity
from pgprune_core.model.granularity.channel import ChannelGranularity
from pgprune_core.model.granularity.expert import ExpertGranularity
from pgprune_core.model.granularity.head import HeadGranularity
from pgprune_core.model.granularity.layer import LayerGranularity
from pgprune_core.model.granularity.mlp import MlpGranularity
from pgprune_core.model.granularity.rowmask import (
    NotRowwise,
    by_layer,
    current_rows,
    full_width,
    input_scaler,
    select_rows,
)
from pgprune_core.model.granularity.slicing import block_rows, group_features
from pgprune_core.model.pruned_modeling import set_head_counts
from pgprune_core.model.structure import (
    AttentionSite,
    MlpSite,
    ModelStructure,
    RowBlock,
    UnitLayout,
    UnitSet,
)

#: the values of ``skip_pruned``
SKIP_MODES: tuple[str, ...] = ("auto", "on", "off")
#: ``auto`` skips in a block only when at most this fraction of its units is kept (mean
#: over the rows): above it the saved multiply-adds do not pay for the gather and the
#: smaller per-run matrix products (docs/benchmarks.md, "Skipping pruned units")
AUTO_MAX_KEEP = 0.85
#: ``auto`` skips only in blocks whose projections hold at least this many weights: in
#: smaller ones the per-run Python work outweighs the arithmetic saved
AUTO_MIN_WEIGHTS = 1 << 14

#: per-unit kinds and whole-block kinds folded into the MLP / attention keep matrices
_PER_UNIT = {ChannelGranularity: "mlp", HeadGranularity: "attention"}
_WHOLE_BLOCK = {MlpGranularity: "mlp", AttentionGranularity: "attention"}
#: kinds that install as in the masked forward and do not touch the blocks' projections
_INDEPENDENT = (LayerGranularity, ExpertGranularity)


def is_hard(masks: torch.Tensor) -> bool:
    """0/1 masks that want no gradient: the pruned units can be left out exactly."""
    if masks.requires_grad:
        return False
    if masks.dtype == torch.bool:
        return True
    return bool(((masks == 0) | (masks == 1)).all())


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`SKIP_MODES`; a ValueError naming them otherwise."""
    if mode not in SKIP_MODES:
        raise ValueError(f"unknown skip_pruned mode {mode!r}; use one of {', '.join(SKIP_MODES)}")
    return mode


def _site_kind(granularity: Granularity) -> tuple[str, bool] | None:
    """(``"mlp"`` or ``"attention"``, whole block?) for the kinds folded into the blocks."""
    for table, whole in ((_PER_UNIT, False), (_WHOLE_BLOCK, True)):
        for cls, site in table.items():
            if isinstance(granularity, cls):
                return site, whole
    return None


def _module_names(block: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in block.named_modules()}


def _parent_of(root: nn.Module, target: nn.Module) -> tuple[nn.Module, str] | None:
    for module in root.modules():
        for name, child in module.named_children():
            if child is target:
                return module, name
    return None


def _runs(keep: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
    """Runs of consecutive rows of ``keep`` (bool [rows, units]) with the same row: per run
    its rows and the indices of its kept units."""
    n_rows = keep.shape[0]
    if n_rows == 0:
        return []
    starts = [0, *((keep[1:] != keep[:-1]).any(dim=1).nonzero().squeeze(1) + 1).tolist()]
    stops = [*starts[1:], n_rows]
    return [(slice(a, b), keep[a].nonzero().squeeze(1)) for a, b in zip(starts, stops, strict=True)]


class _SkippingBlock(nn.Module):
    """Stands in for one MLP or attention block while hard per-row masks are installed;
    attributes not its own are read from the original block."""

    def __init__(self, block: nn.Module, keep: torch.Tensor, features: int) -> None:
        super().__init__()
        self.block = block
        self.keep = keep  # bool [rows, units], on the CPU
        self.features = features  # input features of the output projection per unit
        self.names = _module_names(block)

    @property
    def output(self) -> nn.Linear:
        """The block's output projection (``down_proj`` / ``o_proj``)."""
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        n_rows = hidden.shape[0]
        keep = current_rows(self.keep, n_rows)
        runs = _runs(keep)
        if len(runs) == 1 and runs[0][1].numel() == keep.shape[1]:
            return self.block(*args, **kwargs)
        try:
            parts = [(rows, select_rows(args, rows, n_rows), select_rows(kwargs, rows, n_rows))
                     for rows, _ in runs]
        except NotRowwise:
            return self._masked(args, kwargs)
        outputs = []
        for (rows, sub_args, sub_kwargs), (_, kept) in zip(parts, runs, strict=True):
            x = hidden[rows]
            if kept.numel() == 0:
                outputs.append(self._empty(x))
            elif kept.numel() == keep.shape[1]:
                outputs.append(self._result(self.block(*sub_args, **sub_kwargs)))
            else:
                outputs.append(self._result(self._narrowed(kept, sub_args, sub_kwargs)))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return self._wrap(out)

    def _masked(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The whole block with its mask on the input of the output projection, as the
        masked forward computes it."""
        mask = self.keep.repeat_interleave(self.features, dim=1)
        weight = self.output.weight
        handle = self.output.register_forward_pre_hook(
            input_scaler(mask.to(device=weight.device, dtype=weight.dtype)))
        try:
            return self.block(*args, **kwargs)
        finally:
            handle.remove()

    def _empty(self, x: torch.Tensor) -> torch.Tensor:
        """What the block adds when it keeps no unit: its output projection's bias."""
        out = x.new_zeros(*x.shape[:-1], self.output.out_features)
        bias = self.output.bias
        return out if bias is None else out + bias.to(out.dtype)

    def _gathered(self, blocks: Sequence[RowBlock], kept: Sequence[torch.Tensor],
                  columns: torch.Tensor) -> dict[str, torch.Tensor]:
        """The block's parameters narrowed to the kept units: rows ``kept[i]`` of every
        input-side block, columns ``columns`` of the output projection."""
        params: dict[str, torch.Tensor] = {}
        for linear, rows in block_rows(blocks, kept):
            name = self.names[id(linear)]
            rows = rows.to(linear.weight.device)
            params[f"{name}.weight"] = linear.weight.index_select(0, rows)
            if linear.bias is not None:
                params[f"{name}.bias"] = linear.bias.index_select(0, rows)
        weight = self.output.weight
        params[f"{self.names[id(self.output)]}.weight"] = weight.index_select(
            1, columns.to(weight.device))
        return params

    def _narrowed(self, kept: torch.Tensor, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    @staticmethod
    def _result(output: Any) -> torch.Tensor:
        return output

    @staticmethod
    def _wrap(out: torch.Tensor) -> Any:
        return out


class SkippingMlp(_SkippingBlock):
    """A gated MLP computing, per run of rows, only the channels those rows keep."""

    def __init__(self, site: MlpSite, keep: torch.Tensor) -> None:
        super().__init__(site.module, keep, 1)
        self.site = site

    @property
    def output(self) -> nn.Linear:
        return self.site.down_proj

    def _narrowed(self, kept: torch.Tensor, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        params = self._gathered(self.site.gate_up_blocks(), (kept, kept), kept)
        return functional_call(self.block, params, args, kwargs)


class SkippingAttention(_SkippingBlock):
    """An attention block computing, per run of rows, only the KV groups those rows keep.
    Returns ``(output, None)``, as transformers' attention blocks do without attention
    weights."""

    def __init__(self, site: AttentionSite, keep: torch.Tensor) -> None:
        super().__init__(site.module, keep, site.group_size * site.head_dim)
        self.site = site

    @property
    def output(self) -> nn.Linear:
        return self.site.o_proj

    def _narrowed(self, kept: torch.Tensor, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        site = self.site
        q_features, kv_features = group_features(kept, site.group_size, site.head_dim)
        params = self._gathered(site.qkv_blocks(), (q_features, kv_features, kv_features),
                                q_features)
        with _head_counts(self.block, int(kept.numel()) * site.group_size, int(kept.numel())):
            return functional_call(self.block, params, args, kwargs)

    @staticmethod
    def _result(output: Any) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output

    @staticmethod
    def _wrap(out: torch.Tensor) -> Any:
        return out, None


#: attributes of an attention block that :func:`set_head_counts` may change
_HEAD_COUNT_ATTRIBUTES = ("num_key_value_groups", "num_heads", "num_key_value_heads", "config")


@contextlib.contextmanager
def _head_counts(block: nn.Module, n_heads: int, n_kv_heads: int) -> Iterator[None]:
    """Within the block, ``block`` reads the head counts of a block cut to these heads."""
    saved = {name: block.__dict__[name] for name in _HEAD_COUNT_ATTRIBUTES
             if name in block.__dict__}
    set_head_counts(block, n_heads, n_kv_heads)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(block, name, value)


class _Restore:
    """Puts the original block back into its parent."""

    def __init__(self, parent: nn.Module, name: str, original: nn.Module) -> None:
        self.parent, self.name, self.original = parent, name, original

    def remove(self) -> None:
        setattr(self.parent, self.name, self.original)


def _projection_weights(site: MlpSite | AttentionSite) -> int:
    linears = {id(lin): lin for lin in (
        [b.linear for b in site.gate_up_blocks()] + [site.down_proj] if isinstance(site, MlpSite)
        else [b.linear for b in site.qkv_blocks()] + [site.o_proj])}
    return sum(lin.weight.numel() for lin in linears.values())


def _findable(site: MlpSite | AttentionSite) -> bool:
    """Whether the block's projections are submodules of it (functional_call reaches them)."""
    names = _module_names(site.module)
    blocks = site.gate_up_blocks() if isinstance(site, MlpSite) else site.qkv_blocks()
    output = site.down_proj if isinstance(site, MlpSite) else site.o_proj
    return all(id(b.linear) in names for b in blocks) and id(output) in names


def install_skipping(
    structure: ModelStructure,
    layout: UnitLayout,
    granularities: Mapping[str, Granularity],
    parts: Mapping[str, torch.Tensor],
    mode: str,
) -> tuple[list[Handle], dict[str, tuple[UnitSet, torch.Tensor]]]:
    """Install the stand-ins for the blocks ``mode`` skips in, for the hard masks ``parts``
    (``{kind: [rows, n_kind]}``).  Returns their handles and, per kind, the units (and
    their mask columns) left to the masked forward."""
    rest = {kind: (layout[kind], parts[kind]) for kind in layout.kinds}
    if check_mode(mode) == "off" or not all(
            _site_kind(g) is not None or isinstance(g, _INDEPENDENT)
            for kind, g in granularities.items() if kind in rest):
        return [], rest
    # per block, the product of the keep matrices of every kind that masks it
    keeps: dict[tuple[str, int], torch.Tensor] = {}
    covering: dict[tuple[str, int], list[str]] = {}
    for kind in layout.kinds:
        site_kind = _site_kind(granularities[kind])
        if site_kind is None:
            continue
        block, whole = site_kind
        for layer, (index, columns) in by_layer(layout[kind], parts[kind]).items():
            site = _site(structure, block, layer)
            width = site.intermediate_size if isinstance(site, MlpSite) else site.n_kv_heads
            keep = columns.bool().cpu()
            keep = keep.expand(-1, width) if whole else full_width(index, keep, width)
            key = (block, layer)
            keeps[key] = keep if key not in keeps else keeps[key] & keep
            covering.setdefault(key, []).append(kind)
    handles: list[Handle] = []
    skipped: dict[str, list[int]] = {}
    try:
        for (block, layer), keep in keeps.items():
            site = _site(structure, block, layer)
            if bool(keep.all()) or not _chosen(site, keep, mode):
                continue
            place = _parent_of(structure.layers[layer].module, site.module)
            if place is None:
                continue
            parent, name = place
            stand_in = (SkippingMlp(site, keep) if isinstance(site, MlpSite)
                        else SkippingAttention(site, keep))
            setattr(parent, name, stand_in)
            handles.append(_Restore(parent, name, site.module))
            for kind in covering[(block, layer)]:
                skipped.setdefault(kind, []).append(layer)
    except BaseException:
        for handle in reversed(handles):
            handle.remove()
        raise
    for kind, layers in skipped.items():
        units, columns = rest[kind]
        left = ~torch.isin(units.layer, torch.tensor(layers, dtype=torch.int64))
        cols = left.nonzero().squeeze(1)
        rest[kind] = (UnitSet(units.kind, units.layer[cols], units.index[cols], units.cost[cols],
                              dict(units.min_kept)),
                      columns.index_select(1, cols.to(columns.device)))
    return handles, rest


def _site(structure: ModelStructure, block: str, layer: int) -> MlpSite | AttentionSite:
    site = structure.layers[layer]
    return site.dense_mlp() if block == "mlp" else site.attention


def _chosen(site: MlpSite | AttentionSite, keep: torch.Tensor, mode: str) -> bool:
    """Whether ``mode`` skips in this block (which prunes a unit in some row)."""
    if not _findable(site):
        return False
    if mode == "on":
        return True
    return (float(keep.float().mean()) <= AUTO_MAX_KEEP
            and _projection_weights(site) >= AUTO_MIN_WEIGHTS)
