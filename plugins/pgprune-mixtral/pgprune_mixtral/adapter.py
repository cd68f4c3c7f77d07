"""The ``mixtral`` adapter: what pgprune needs to know about MixtralForCausalLM.

Every Mixtral layer is sparse: llama-family attention (grouped-query, sliding window when
the config sets one) and a block ``mlp`` of ``num_local_experts`` routed experts (fused
``mlp.experts.gate_up_proj`` / ``down_proj``) behind a top-k router ``mlp.gate`` that
always renormalises the chosen experts' weights.  There is no dense MLP, so the units are
attention heads, experts and layers (:class:`pgprune_core.model.moe_adapter.MoeDecoderAdapter`).
"""

from __future__ import annotations

from pgprune_core.model.moe_adapter import MoeDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: the llama family's names; the sparse block is ``mlp`` with ``gate`` and ``experts``
MIXTRAL_NAMES = ModuleNames()


class MixtralAdapter(MoeDecoderAdapter):
    """Mixtral (MixtralForCausalLM): sparse mixture-of-experts, top-k renormalised routing."""

    name = "mixtral"
    model_types = ("mixtral",)
    model_class = "transformers.MixtralForCausalLM"
    names = MIXTRAL_NAMES
    renormalise = True
