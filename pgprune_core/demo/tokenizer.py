"""The demo tokenizer: byte-level BPE trained on the training topics.

Byte-level, so any text (the calibration and evaluation topics, a user's own file) encodes
without unknown tokens; ``<s>`` is prepended to every encoding as LLaMA does, ``</s>`` is
the end-of-sequence token and ``<pad>`` pads.  The ``tokenizers`` BPE trainer is
deterministic, so the saved ``tokenizer.json`` is byte-identical across builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: special tokens, in id order (ids 0, 1, 2: the model config refers to them by id)
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)


def train_tokenizer(documents: Sequence[str], vocab_size: int) -> Any:
    """A ``PreTrainedTokenizerFast`` trained on ``documents`` (one topic each)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(documents), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
    )
