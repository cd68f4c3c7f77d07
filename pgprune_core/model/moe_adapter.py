"""The adapter base for mixture-of-experts decoders (Mixtral, Qwen2-MoE, Qwen3-MoE, ...).

A sparse layer of transformers 5 holds, at ``names.moe`` inside the layer, a block with a
top-k router (``names.router``: ``weight`` ``[n_experts, hidden]``, ``top_k``) and a fused
experts module (``names.experts``: every expert's weights in 3-D parameters whose first
dimension is the expert).  :class:`MoeDecoderAdapter` describes those as
:class:`~pgprune_core.model.structure.ExpertSite` s (the ``expert`` granularity's units)
and the attention as every llama-family adapter does.  A layer's dense MLP, when it has
one (a shared expert, or a dense layer between sparse ones), is its ``MlpSite``; a sparse
layer without one has ``mlp = None``.  Adapter plugins state the class, the model types,
the names and how their router renormalises.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from pgprune_core.errors import ModelError
from pgprune_core.model.hf_adapter import HFDecoderAdapter
from pgprune_core.model.pruned_modeling import expert_parameters
from pgprune_core.model.structure import ExpertSite, MlpSite


class MoeDecoderAdapter(HFDecoderAdapter):
    """Loads and describes a mixture-of-experts decoder (subclasses name the architecture)."""

    #: ``True``/``False``: the router always / never divides the top-k weights by their sum
    #: (Mixtral: always); ``None``: the router's ``norm_topk_prob`` says (Qwen-MoE)
    renormalise: ClassVar[bool | None] = None

    def mlp_site(self, index: int, layer: nn.Module) -> MlpSite | None:
        names = self.names
        try:
            module = layer.get_submodule(names.mlp)
        except AttributeError:
            return None
        if not all(hasattr(module, n) for n in (names.gate_proj, names.up_proj, names.down_proj)):
            return None  # the sparse block itself: no dense MLP in this layer
        return super().mlp_site(index, layer)

    def expert_site(self, index: int, layer: nn.Module) -> ExpertSite | None:
        names = self.names
        try:
            block = layer.get_submodule(names.moe)
        except AttributeError:
            return None
        router: Any = getattr(block, names.router, None)
        experts: Any = getattr(block, names.experts, None)
        if router is None or experts is None:
            return None  # a dense layer
        n_experts = int(router.weight.shape[0])
        params = expert_parameters(experts, n_experts)
        if not params or isinstance(experts, nn.ModuleList):
            raise ModelError(f"adapter '{self.name}': layer {index}'s experts are not fused 3-D "
                             f"parameters (transformers >= 5 stores them so); cannot prune them")
        renormalise = (self.renormalise if self.renormalise is not None
                       else bool(getattr(router, "norm_topk_prob", False)))
        return ExpertSite(layer=index, module=block, router=router, experts=experts,
                          n_experts=n_experts, top_k=int(router.top_k), renormalise=renormalise,
                          expert_params=params)
