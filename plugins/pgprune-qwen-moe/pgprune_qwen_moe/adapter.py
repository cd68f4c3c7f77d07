"""The ``qwen2_moe`` and ``qwen3_moe`` adapters.

Both routers pick the top-k of a softmax over ``num_experts`` experts and divide the chosen
weights by their sum only when the config's ``norm_topk_prob`` is set, which the router
carries (:class:`pgprune_core.model.moe_adapter.MoeDecoderAdapter` reads it there).

- Qwen2-MoE: every sparse block also has a shared expert (``mlp.shared_expert``, a dense
  gated MLP scaled by its own sigmoid gate ``mlp.shared_expert_gate``).  It is not a
  routed expert: the ``channel`` and ``mlp`` kinds see it as the layer's dense MLP.  The
  attention projections q, k, v carry biases.  Dense layers between sparse ones
  (``mlp_only_layers``, ``decoder_sparse_step`` > 1) would put the dense MLP at another
  path than the shared expert's, so such configs are refused.
- Qwen3-MoE: no shared expert; per-head RMSNorm of queries and keys (shared by the heads,
  so heads are pruned as in llama).  Dense layers between sparse ones are described as
  dense MLPs (``mlp``), the sparse ones by their experts.
"""

from __future__ import annotations

from typing import Any

from pgprune_core.errors import ModelError
from pgprune_core.model.moe_adapter import MoeDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: the sparse block is ``mlp``; the shared expert inside it is the layer's dense MLP
QWEN2_MOE_NAMES = ModuleNames(mlp="mlp.shared_expert")
QWEN3_MOE_NAMES = ModuleNames()


class Qwen2MoeAdapter(MoeDecoderAdapter):
    """Qwen2-MoE (Qwen2MoeForCausalLM): routed experts plus a gated shared expert."""

    name = "qwen2_moe"
    model_types = ("qwen2_moe",)
    model_class = "transformers.Qwen2MoeForCausalLM"
    names = QWEN2_MOE_NAMES

    def check_config(self, model_config: Any) -> None:
        super().check_config(model_config)
        step = int(getattr(model_config, "decoder_sparse_step", 1) or 1)
        dense = list(getattr(model_config, "mlp_only_layers", None) or [])
        if step != 1 or dense:
            raise ModelError(f"adapter '{self.name}' handles Qwen2-MoE models whose every layer "
                             f"is sparse; this one has dense layers (decoder_sparse_step={step}, "
                             f"mlp_only_layers={dense})")


class Qwen3MoeAdapter(MoeDecoderAdapter):
    """Qwen3-MoE (Qwen3MoeForCausalLM): routed experts, per-head query/key norms."""

    name = "qwen3_moe"
    model_types = ("qwen3_moe",)
    model_class = "transformers.Qwen3MoeForCausalLM"
    names = QWEN3_MOE_NAMES
