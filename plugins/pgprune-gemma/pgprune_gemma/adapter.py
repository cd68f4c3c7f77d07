"""The ``gemma2`` and ``gemma3`` adapters: what pgprune needs to know about
Gemma2ForCausalLM and Gemma3ForCausalLM.

Both keep the llama family's block names (``self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj`` with a GELU gate), so the generic machinery applies; what
differs is handled as follows.

- ``head_dim`` (256 in the released models) is independent of ``hidden_size /
  num_attention_heads``; it is read from the attention module.
- Pre- and post-feedforward norms (and the post-attention norm) act on the hidden size,
  which pruning never changes; they belong to their layer (a dropped layer takes them along).
- Attention logit soft-capping, final logit soft-capping, ``query_pre_attn_scalar`` and
  the embedding scaling by ``sqrt(hidden_size)`` are config properties that pruning keeps.
- Sliding-window and full-attention layers alternate (``config.layer_types``; Gemma 3 also
  gives sliding layers their own rotary base).  Dropping a layer drops its entry, so every
  kept layer keeps its kind: the pattern of a pruned model is the original pattern with
  the dropped layers left out, never the default pattern re-applied to fewer layers.
- Gemma 3's per-head ``q_norm`` / ``k_norm`` over ``head_dim`` are shared by all heads and
  stay as they are when heads are cut.
- Tied embeddings (the default) stay tied.

``gemma3-multimodal`` prunes the language model of the image-text Gemma 3 checkpoints
(``model_type: gemma3``, Gemma3ForConditionalGeneration): its decoder layers are
``model.language_model.layers`` and its layer facts are in ``config.text_config``; the
vision tower and the projector are left as they are.  Calibration and evaluation are
text-only.
"""

from __future__ import annotations

from pgprune_core.model.hf_adapter import HFDecoderAdapter
from pgprune_core.model.structure import ModuleNames

#: Gemma's attribute names, the llama family's (ModuleNames' defaults)
GEMMA_NAMES = ModuleNames()


class Gemma2Adapter(HFDecoderAdapter):
    """Gemma 2 (Gemma2ForCausalLM): alternating sliding-window layers, logit soft-capping."""

    name = "gemma2"
    model_types = ("gemma2",)
    model_class = "transformers.Gemma2ForCausalLM"
    names = GEMMA_NAMES


class Gemma3Adapter(HFDecoderAdapter):
    """Gemma 3 text models (Gemma3ForCausalLM): 5:1 sliding/full layers, per-head q/k norms."""

    name = "gemma3"
    model_types = ("gemma3_text",)
    model_class = "transformers.Gemma3ForCausalLM"
    names = GEMMA_NAMES


class Gemma3MultimodalAdapter(HFDecoderAdapter):
    """Gemma 3 image-text models (Gemma3ForConditionalGeneration): the language model's units."""

    name = "gemma3-multimodal"
    model_types = ("gemma3",)
    model_class = "transformers.Gemma3ForConditionalGeneration"
    names = ModuleNames(layers="model.language_model.layers")
