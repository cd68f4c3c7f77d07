"""The ``mistral`` adapter: what pgprune needs to know about MistralForCausalLM.

Mistral is a llama-family decoder with grouped-query attention and a sliding attention
window.  The window is a property of the attention call and of the KV cache (both read it
from the config, which pruning keeps), so the generic machinery of
:class:`pgprune_core.model.hf_adapter.HFDecoderAdapter` covers it with Mistral's class and names.
"""

from __future__ import annotations

from pgprune_core.model.hf_adapter import HFDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: the llama family's attribute names, which are ModuleNames' defaults
MISTRAL_NAMES = ModuleNames()


class MistralAdapter(HFDecoderAdapter):
    """Mistral (MistralForCausalLM): grouped-query attention with a sliding window."""

    name = "mistral"
    model_types = ("mistral",)
    model_class = "transformers.MistralForCausalLM"
    names = MISTRAL_NAMES
