"""What the demo model is: architecture, tokenizer size and training schedule, as data.

A recipe fully determines the bytes of the model it builds (with the corpus and, because
floating-point kernels differ between CPUs and library versions, the machine and the torch
version).  Its ``name`` is the cache entry's name, so changing any constant of a recipe
must come with a new name (``demo-llama-v2``), or caches built by the old recipe would be
taken for the new one.

Two recipes exist: ``demo``, the one ``pgprune run`` uses (sized so that it trains in
under two minutes on two CPU cores, clearly beats a unigram model on held-out topics, and
visibly loses perplexity when 30 % of its channels and heads are pruned), and ``tiny``, a
seconds-long build with the same code path, for tests.  ``PGPRUNE_DEMO_RECIPE=tiny``
selects it everywhere, which is how an end-to-end test of ``pgprune run`` without
``--model`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from pgprune_core.errors import ConfigError

#: environment variable naming the recipe that ``ensure_demo_model`` builds by default
RECIPE_ENV = "PGPRUNE_DEMO_RECIPE"


@dataclass(frozen=True)
class DemoRecipe:
    """Every constant of one demo-model build."""

    #: cache entry name; bump the version with any change below
    name: str
    #: byte-level BPE vocabulary, including the three special tokens
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    #: tokens per training window (also the model's max_position_embeddings)
    seq_len: int
    #: windows per optimiser step
    batch_size: int
    steps: int
    #: peak AdamW learning rate, reached after ``warmup_steps``, then cosine to ``lr * min_lr_ratio``
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    seed: int
    #: intra-op threads during the build (fixed, so that no kernel can split a reduction
    #: differently from one build to the next)
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEMO = DemoRecipe(
    name="demo-llama-v1",
    vocab_size=2048,
    hidden_size=192,
    intermediate_size=512,
    num_layers=4,
    num_heads=6,
    seq_len=128,
    batch_size=4,
    steps=900,
    lr=2e-3,
    warmup_steps=50,
    min_lr_ratio=0.1,
    weight_decay=0.1,
    seed=0,
    threads=1,
)

TINY = DemoRecipe(
    name="demo-llama-tiny-v1",
    vocab_size=384,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    seq_len=64,
    batch_size=4,
    steps=20,
    lr=3e-3,
    warmup_steps=2,
    min_lr_ratio=0.1,
    weight_decay=0.1,
    seed=0,
    threads=1,
)

RECIPES: dict[str, DemoRecipe] = {"demo": DEMO, "tiny": TINY}


def default_recipe() -> DemoRecipe:
    """The recipe ``$PGPRUNE_DEMO_RECIPE`` names (``demo`` when unset)."""
    choice = os.environ.get(RECIPE_ENV, "").strip() or "demo"
    try:
        return RECIPES[choice]
    except KeyError:
        raise ConfigError(
            f"{RECIPE_ENV}={choice!r} is not a demo recipe; valid: {', '.join(RECIPES)}"
        ) from None
