"""Building the demo model into the cache, once, and handing out the cached copy after.

``ensure_demo_model`` is what ``pgprune run`` without ``--model`` calls: on a fresh machine
it trains the model (about two minutes on two cores, with a progress bar), later calls
return the cached directory after checking its hashes.  The directory is a normal Hugging
Face LLaMA checkpoint (``config.json``, ``model.safetensors``, the tokenizer files) plus
``PROVENANCE.json``: the recipe, the corpus split, the versions, the final training loss,
held-out and unigram perplexities, the build time and the sha256 of every file.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgprune_core.data.cache import cache_root
from pgprune_core.demo.cache import (
    PROVENANCE,
    PROVENANCE_FORMAT,
    build_lock,
    entry_name,
    file_hashes,
    read_provenance,
    remove_stale_builds,
)
from pgprune_core.demo.corpus import CorpusSplit, demo_corpus
from pgprune_core.demo.recipe import DemoRecipe, default_recipe
from pgprune_core.demo.tokenizer import train_tokenizer
from pgprune_core.demo.train import (
    perplexity,
    reproducible_torch,
    token_stream,
    train_model,
    unigram_perplexity,
)
from pgprune_core.errors import ModelError
from pgprune_core.report.progress import Reporter, SilentReporter
from pgprune_core.run.artifacts import atomic_dir, atomic_write_json


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own "Writing model shards" bar: the demo reports its own progress."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def demo_model_path(cache_dir: str | Path | None = None, recipe: DemoRecipe | None = None) -> Path:
    """Where the demo model of ``recipe`` lives (whether or not it has been built)."""
    recipe = recipe or default_recipe()
    return cache_root(cache_dir) / entry_name(recipe.name, demo_corpus().sha256)


def ensure_demo_model(
    reporter: Reporter | None = None,
    cache_dir: str | Path | None = None,
    recipe: DemoRecipe | None = None,
) -> Path:
    """The directory of the demo model, built first if the cache has no intact copy.

    ``recipe`` defaults to the one ``$PGPRUNE_DEMO_RECIPE`` names (``demo``).  Concurrent
    callers wait for one build; a killed build leaves no entry behind, only a temporary
    that the next build removes.
    """
    reporter = reporter or SilentReporter()
    recipe = recipe or default_recipe()
    corpus = demo_corpus()
    root = cache_root(cache_dir)
    name = entry_name(recipe.name, corpus.sha256)
    target = root / name
    if read_provenance(target) is not None:
        return target
    with build_lock(root, name) as exclusive:
        if read_provenance(target) is not None:  # another process built it while we waited
            return target
        if exclusive:
            remove_stale_builds(root, name)
        if target.exists():
            reporter.message(f"the cached demo model at {target} is incomplete or corrupt; rebuilding it")
        reporter.phase(f"building the demo model '{recipe.name}' (first run only; "
                       f"cached in {root})")
        with atomic_dir(target) as tmp:
            build_demo_model(tmp, recipe, corpus, reporter)
    return target


def rebuild_demo_model(
    reporter: Reporter | None = None,
    cache_dir: str | Path | None = None,
    recipe: DemoRecipe | None = None,
) -> Path:
    """Build the demo model afresh and replace the cached copy, intact or not."""
    reporter = reporter or SilentReporter()
    recipe = recipe or default_recipe()
    corpus = demo_corpus()
    root = cache_root(cache_dir)
    name = entry_name(recipe.name, corpus.sha256)
    with build_lock(root, name) as exclusive:
        if exclusive:
            remove_stale_builds(root, name)
        reporter.phase(f"rebuilding the demo model '{recipe.name}' in {root}")
        with atomic_dir(root / name) as tmp:
            build_demo_model(tmp, recipe, corpus, reporter)
    return root / name


def build_demo_model(
    directory: Path, recipe: DemoRecipe, corpus: CorpusSplit, reporter: Reporter
) -> dict[str, Any]:
    """Train the tokenizer and the model of ``recipe`` and save both (and the provenance)
    into the existing, empty ``directory``; returns the provenance."""
    import tokenizers
    import torch
    import transformers

    started = time.perf_counter()
    cpu_started = time.process_time()
    with reproducible_torch(recipe.seed, recipe.threads):
        reporter.phase(f"training a {recipe.vocab_size}-token BPE tokenizer on "
                       f"{len(corpus.parts['train'])} help topics")
        tokenizer = train_tokenizer(corpus.documents("train"), recipe.vocab_size)
        train_tokens = token_stream(corpus.documents("train"), tokenizer)
        eval_tokens = token_stream(corpus.documents("evaluation"), tokenizer)
        training_started = time.perf_counter()
        result = train_model(
            recipe, train_tokens, tokenizer,
            track=lambda steps: reporter.track(steps, len(steps), "training the demo model"),
        )
        train_s = time.perf_counter() - training_started
        held_out = perplexity(result.model, eval_tokens, recipe.seq_len)
        with quiet_transformers():
            result.model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
    files = file_hashes(directory)
    if "model.safetensors" not in files:
        raise ModelError(f"saving the demo model into {directory} wrote no model.safetensors")
    unigram = unigram_perplexity(train_tokens, eval_tokens, recipe.vocab_size)
    provenance = {
        "format": PROVENANCE_FORMAT,
        "recipe": recipe.as_dict(),
        "corpus": corpus.describe(),
        "tokens": {"train": int(train_tokens.numel()), "evaluation": int(eval_tokens.numel())},
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "training": {
            "final_loss": round(result.final_loss, 4),
            "loss_curve": result.curve,
            "tokens_seen": recipe.steps * recipe.batch_size * recipe.seq_len,
        },
        "evaluation": {
            "perplexity": round(held_out, 3),
            "unigram_perplexity": round(unigram, 3),
            "note": "non-overlapping windows of seq_len tokens over the evaluation topics",
        },
        "build": {
            "wall_s": round(time.perf_counter() - started, 2),
            "train_wall_s": round(train_s, 2),
            "cpu_s": round(time.process_time() - cpu_started, 2),
            "threads": recipe.threads,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "files": files,
    }
    atomic_write_json(directory / PROVENANCE, provenance)
    reporter.message(
        f"demo model built in {provenance['build']['wall_s']:.0f} s: final training loss "
        f"{result.final_loss:.3f}, held-out perplexity {held_out:.1f} (unigram {unigram:.1f})"
    )
    return provenance
