"""Corpora as one token stream, tokenized once and cached on disk.

Two ways of turning documents into a stream, because calibration and evaluation follow
different conventions:

- ``"eos"`` (calibration): every non-blank document is tokenized on its own, without
  special tokens, and followed by the tokenizer's EOS token, so that a window drawn at a
  random offset sees document boundaries the way the model saw them in pre-training.
- ``"text"`` (evaluation, the paper's and GPTQ's perplexity protocol): the documents are
  joined with ``"\\n\\n"`` and tokenized once as a single string, with the tokenizer's
  usual special tokens (a LLaMA tokenizer prepends one BOS).

The cache key covers everything that changes the tokens: the source's fingerprint (corpus
identity, file size and mtime, document slice, text field), a fingerprint of the tokenizer
(its full serialisation) and the joining convention.  Entries are safetensors files under
``<cache root>/tokens/``, written atomically, so concurrent runs at worst tokenize twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from pgprune_core.data.cache import cache_root
from pgprune_core.errors import ModelError
from pgprune_core.report.progress import Reporter, SilentReporter
from pgprune_core.run.artifacts import atomic_path

Joining = Literal["eos", "text"]

#: separator of documents in the evaluation stream (the GPTQ/SparseGPT/Wanda protocol)
EVAL_SEPARATOR = "\n\n"
#: bump when the layout of cache entries changes
CACHE_FORMAT = "pgprune-tokens/1"
#: documents per tokenizer call (fast tokenizers parallelise within a call)
TOKENIZE_BATCH = 1000


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how the tokenizer maps text to ids: the full
    serialised tokenizer (``tokenizer.json``) where there is one, else the vocabulary,
    plus the special-token ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = {
        "class": type(tokenizer).__name__,
        "bos": getattr(tokenizer, "bos_token_id", None),
        "eos": getattr(tokenizer, "eos_token_id", None),
    }
    digest = hashlib.sha256(payload.encode("utf-8"))
    digest.update(json.dumps(specials, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def tokenize_texts(
    texts: Sequence[str],
    tokenizer: Any,
    joining: Joining,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """int64 [total]: ``texts`` as one token stream (see the module docstring)."""
    if joining == "text":
        ids = tokenizer(EVAL_SEPARATOR.join(texts), verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.int64)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ModelError("the tokenizer has no EOS token to mark the end of each document")
    docs = [t for t in texts if t.strip()]
    batches = [docs[i : i + TOKENIZE_BATCH] for i in range(0, len(docs), TOKENIZE_BATCH)]
    parts: list[torch.Tensor] = []
    reporter = reporter or SilentReporter()
    for batch in reporter.track(batches, len(batches), "tokenizing"):
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            parts.append(torch.tensor([*ids, eos], dtype=torch.int64))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def cache_path(source: Any, tokenizer: Any, joining: Joining, cache_dir: str | Path | None) -> Path:
    """Where the tokens of ``source`` under ``tokenizer`` and ``joining`` are cached."""
    key = hashlib.sha256(
        json.dumps(
            {
                "format": CACHE_FORMAT,
                "source": source.fingerprint,
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "joining": joining,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:32]
    root = cache_root(cache_dir if cache_dir is not None else getattr(source, "cache_dir", None))
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name)
    return root / "tokens" / f"{safe_name}-{joining}-{key}.safetensors"


def tokenize_source(
    source: Any,
    tokenizer: Any,
    *,
    joining: Joining = "eos",
    cache_dir: str | Path | None = None,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """int64 [total]: the token stream of ``source``, from the cache when possible.

    ``source`` needs ``.name`` and ``.texts()``; it is cached only when it also has a
    ``.fingerprint`` (a :class:`~pgprune_core.data.sources.TextSource` has one; an ad-hoc
    object in ``EvalContext.datasets`` may not).  ``cache_dir`` overrides the source's own
    cache directory.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    if getattr(source, "fingerprint", None) is None:
        return tokenize_texts(source.texts(), tokenizer, joining, reporter)
    path = cache_path(source, tokenizer, joining, cache_dir)
    if path.is_file():
        try:
            return load_file(path)["tokens"].to(torch.int64)
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged entry is rebuilt below
    tokens = tokenize_texts(source.texts(), tokenizer, joining, reporter)
    fits_int32 = tokens.numel() == 0 or int(tokens.max()) < 2**31
    stored = tokens.to(torch.int32) if fits_int32 else tokens
    metadata = {
        "format": CACHE_FORMAT,
        "source": source.name,
        "description": source.describe() if hasattr(source, "describe") else source.name,
        "joining": joining,
        "n_tokens": str(tokens.numel()),
    }
    with atomic_path(path) as tmp:
        save_file({"tokens": stored.contiguous()}, str(tmp), metadata=metadata)
    return tokens
