"""The ``llama`` and ``vicuna`` adapters: what pgprune needs to know about LlamaForCausalLM.

Everything generic (loading, describing sites, errors) is in
:class:`pgprune_core.model.hf_adapter.HFDecoderAdapter`; an adapter only names the architecture.
LLaMA-1/2 (multi-head attention), LLaMA-3 (grouped-query attention, llama3 rope scaling)
and tied or untied embeddings are all ``LlamaForCausalLM`` and need nothing more: head
geometry is read from the module shapes, and rope scaling lives in the rotary embedding,
which pruning does not touch.
"""

from __future__ import annotations

from pgprune_core.model.hf_adapter import HFDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: the llama family's attribute names, which are ModuleNames' defaults
LLAMA_NAMES = ModuleNames()


class LlamaAdapter(HFDecoderAdapter):
    """LLaMA 1/2/3 (LlamaForCausalLM): MHA or GQA, llama3 rope scaling, tied or untied embeddings."""

    name = "llama"
    model_types = ("llama",)
    model_class = "transformers.LlamaForCausalLM"
    names = LLAMA_NAMES


class VicunaAdapter(LlamaAdapter):
    """Vicuna (a fine-tuned LLaMA; same architecture, its own name for resolution and reports)."""

    name = "vicuna"


def is_vicuna(model_config: object) -> bool:
    """Vicuna checkpoints are plain ``llama`` configs; only their name or architectures
    entry tells them apart."""
    name = str(getattr(model_config, "_name_or_path", "") or "")
    architectures = getattr(model_config, "architectures", None) or []
    return "vicuna" in name.lower() or any("vicuna" in str(a).lower() for a in architectures)
