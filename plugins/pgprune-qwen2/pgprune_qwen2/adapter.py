"""The ``qwen2`` adapter: what pgprune needs to know about Qwen2ForCausalLM.

Qwen2 and Qwen2.5 are llama-family decoders (the same block names) whose q, k and v
projections carry biases.  A bias entry belongs to its output row, so the ``head``
granularity cuts a KV group's bias entries with its rows and counts them in the group's
cost; ``o_proj`` has no bias.  Layers at and above ``max_window_layers`` may use sliding
attention (``use_sliding_window``); which layers do is ``config.layer_types``, cut with the
layers so that a kept layer keeps its kind.
"""

from __future__ import annotations

from pgprune_core.model.hf_adapter import HFDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: Qwen2's attribute names, the llama family's (ModuleNames' defaults)
QWEN2_NAMES = ModuleNames()


class Qwen2Adapter(HFDecoderAdapter):
    """Qwen2 / Qwen2.5 (Qwen2ForCausalLM): q/k/v biases, GQA, optional sliding-window layers."""

    name = "qwen2"
    model_types = ("qwen2",)
    model_class = "transformers.Qwen2ForCausalLM"
    names = QWEN2_NAMES
