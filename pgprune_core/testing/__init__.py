"""Tiny in-process models and tokenizers for tests (ours and plugin authors').

Nothing here downloads anything: models are built from a config with seeded random
weights, tokenizers are trained in a fraction of a second on text that ships with Python.
:func:`temporary_plugin` registers a plugin for the duration of a test (a no-op when it is
already installed); :mod:`pgprune_core.testing.oracles` has loss oracles with known answers;
:mod:`pgprune_core.testing.pytest_plugin` ships the fixtures as a pytest plugin;
:mod:`pgprune_core.testing.adapter_suite` is the test class every model adapter passes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import torch

from pgprune_core.plugin.registry import temporary_plugin
from pgprune_core.testing.oracles import QuadraticOracle, ScriptedOracle

__all__ = [
    "QuadraticOracle",
    "ScriptedOracle",
    "fixed_step_estimator",
    "random_model",
    "sample_text",
    "save_run_assets",
    "save_tiny_model",
    "step_context",
    "temporary_plugin",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
    "wait_for_step",
]

Arch = Literal["llama", "llama3", "mistral"]


def tiny_config(
    arch: Arch = "llama",
    *,
    vocab_size: int = 320,
    hidden_size: int = 32,
    intermediate_size: int = 48,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    tie_word_embeddings: bool = False,
    **extra: Any,
) -> Any:
    """A transformers config of a tiny model of the given family.

    ``llama``: LLaMA-2-like multi-head attention; ``llama3``: grouped-query attention (2 KV
    heads) with llama3 rope scaling; ``mistral``: GQA with a sliding window.
    """
    from transformers import LlamaConfig, MistralConfig

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        kv = num_key_value_heads or num_attention_heads
        return LlamaConfig(**common, num_key_value_heads=kv, **extra)
    if arch == "llama3":
        kv = num_key_value_heads or max(1, num_attention_heads // 2)
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return LlamaConfig(**common, num_key_value_heads=kv, rope_parameters=rope, **extra)
    if arch == "mistral":
        kv = num_key_value_heads or max(1, num_attention_heads // 2)
        return MistralConfig(**common, num_key_value_heads=kv, sliding_window=16, **extra)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def tiny_model(arch: Arch = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32,
               **config_kwargs: Any) -> Any:
    """A randomly initialised tiny causal LM in eval mode (weights scaled up a little so
    that masking units changes the logits visibly)."""
    return random_model(tiny_config(arch, **config_kwargs), seed=seed, dtype=dtype,
                        perturb_vectors=False)


def random_model(config: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                 perturb_vectors: bool = True) -> Any:
    """A causal LM built from ``config`` with seeded random weights, in eval mode: matrices
    (embeddings aside) drawn from N(0, 0.2) so that masking units changes the logits
    visibly; with ``perturb_vectors`` biases and norm weights get N(0, 0.1) noise too (a
    bias or norm cut with the wrong rows then changes the logits)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.normal_(0.0, 0.2)
            elif param.dim() == 1 and perturb_vectors:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _training_text() -> str:
    """Text shipped with Python: the docstrings of a few standard-library modules."""
    import argparse
    import collections
    import json
    import pathlib

    parts = []
    for module in (argparse, collections, json, pathlib):
        for obj in vars(module).values():
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                parts.append(doc)
    return "\n\n".join(parts)


def tiny_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` (``<s>`` prepended, ``</s>`` = EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text().split("\n\n"), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=4096,
    )


def sample_text(n_chars: int = 20000) -> str:
    """Deterministic English-ish text for calibration/evaluation in tests."""
    text = _training_text()
    while len(text) < n_chars:
        text = text + "\n\n" + text
    return text[:n_chars]


def save_tiny_model(path: str | Path, arch: Arch = "llama", **kwargs: Any) -> Path:
    """Write a tiny model and its tokenizer as a normal HF directory; returns ``path``."""
    path = Path(path)
    model = tiny_model(arch, **kwargs)
    tokenizer = tiny_tokenizer(model.config.vocab_size)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_run_assets(root: str | Path, *, calib_chars: int, eval_chars: int) -> dict[str, Path]:
    """What an end-to-end test of ``pgprune run`` needs on disk: a tiny 4-layer LLaMA saved
    as a model directory, a calibration text of ``calib_chars`` characters and a held-out
    evaluation text of ``eval_chars`` (the sample text that follows the calibration's)."""
    root = Path(root)
    model = save_tiny_model(root / "model", "llama", num_hidden_layers=4)
    calib = root / "calib.txt"
    calib.write_text(sample_text(calib_chars))
    held_out = root / "heldout.txt"
    held_out.write_text(sample_text(calib_chars + eval_chars)[calib_chars:])
    return {"model": model, "calib": calib, "eval": held_out, "root": root}


def wait_for_step(run: str | Path, step: int, proc: Any, timeout: float = 120) -> None:
    """Wait until the run directory ``run``, written by the process ``proc`` (a
    ``subprocess.Popen``), has logged ``step``: the moment a kill-and-resume test signals it.
    Fails when the process ends first or the step does not come within ``timeout`` s."""
    import json
    import time

    from pgprune_core.run.rundir import RunDir

    log = RunDir(Path(run)).metrics_log
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read() if proc.stderr else ''}")
        if log.exists():
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step} within {timeout:g} s")


def step_context(policy: Any, oracle: Any, step: int = 0, total_steps: int = 100,
                 generator: torch.Generator | None = None, project_fn: Any = None,
                 batch: torch.Tensor | None = None) -> Any:
    """A :class:`~pgprune_core.interfaces.StepContext` for estimator tests: a dummy batch
    (int64 [1, 4], for oracles that ignore it), no projection unless ``project_fn`` is
    given, a generator seeded 0 unless one is given."""
    from pgprune_core.interfaces import StepContext

    return StepContext(
        policy=policy,
        batch=batch if batch is not None else torch.zeros(1, 4, dtype=torch.int64),
        oracle=oracle,
        project=project_fn if project_fn is not None else (lambda z: z),
        step=step,
        total_steps=total_steps,
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
    )


def fixed_step_estimator(cls: Any, **options: Any) -> Any:
    """``cls`` (an estimator whose Config has the step-size options) with a fixed step
    size: constant schedule, no step-count scaling; ``options`` override its Config."""
    base = {"schedule": "constant", "scale_lr_to_steps": False}
    return cls(cls.Config(**{**base, **options}))
