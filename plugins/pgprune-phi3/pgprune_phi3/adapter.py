"""The ``phi3`` adapter: what pgprune needs to know about Phi3ForCausalLM.

Phi-3 fuses projections: ``self_attn.qkv_proj`` holds the query rows (``num_attention_heads
* head_dim``), then the key rows and the value rows (``num_key_value_heads * head_dim``
each); ``mlp.gate_up_proj`` holds the gate rows, then the up rows (``intermediate_size``
each).  Naming them in :class:`~pgprune_core.model.structure.ModuleNames` is all it takes:
the core's row blocks make the unit costs, the surgery and the saved model's shapes cut a KV
group's rows in each of the three blocks and a channel's row in both MLP blocks.  Masks sit
at the inputs of ``o_proj`` and ``down_proj``, after the fused outputs are split, so the
masked forward needs nothing else.

Phi-3's attention splits ``qkv_proj``'s output at ``config.num_attention_heads * head_dim``;
a block that lost heads sees its own head counts through the config view that the core's
surgery (and the saved model's modeling code) gives it.
"""

from __future__ import annotations

from pgprune_core.model.hf_adapter import HFDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: Phi-3's attribute names: fused query/key/value and gate/up projections
PHI3_NAMES = ModuleNames(qkv_proj="qkv_proj", gate_up_proj="gate_up_proj")


class Phi3Adapter(HFDecoderAdapter):
    """Phi-3 (Phi3ForCausalLM): fused qkv_proj and gate_up_proj, GQA, sliding window."""

    name = "phi3"
    model_types = ("phi3",)
    model_class = "transformers.Phi3ForCausalLM"
    names = PHI3_NAMES
