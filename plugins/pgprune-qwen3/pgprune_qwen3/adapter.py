"""The ``qwen3`` adapter: what pgprune needs to know about Qwen3ForCausalLM.

Qwen3 (dense) is a llama-family decoder with two differences that matter for pruning:

- ``q_norm`` and ``k_norm`` are RMSNorms over ``head_dim``, applied to every head with the
  same weights.  No head owns them, so cutting heads leaves them as they are (and an
  attention block left without heads keeps them, so the weight names stay those of the
  original block).
- ``head_dim`` is a config field of its own (128 in the released models), independent of
  ``hidden_size / num_attention_heads``; the geometry is read from the attention module.

q/k/v have no bias unless ``attention_bias`` is set (then o_proj has one too, which no
head owns).  Sliding-window layers, when enabled, follow the kept layers through
``config.layer_types``.
"""

from __future__ import annotations

from pgprune_core.model.hf_adapter import HFDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: Qwen3's attribute names, the llama family's (ModuleNames' defaults)
QWEN3_NAMES = ModuleNames()


class Qwen3Adapter(HFDecoderAdapter):
    """Qwen3 dense models (Qwen3ForCausalLM): per-head q/k norms, independent head size, GQA."""

    name = "qwen3"
    model_types = ("qwen3",)
    model_class = "transformers.Qwen3ForCausalLM"
    names = QWEN3_NAMES
