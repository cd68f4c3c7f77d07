"""Built-in evaluators ``perplexity`` and ``efficiency`` (the measurements live in
:mod:`pgprune_core.evaluation.perplexity` and :mod:`pgprune_core.evaluation.efficiency`; these classes adapt them
to the :class:`~pgprune_core.interfaces.Evaluator` interface and its options)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pgprune_core.config.base import PluginConfig
from pgprune_core.data.tokens import tokenize_source
from pgprune_core.errors import DataError
from pgprune_core.evaluation.efficiency import (
    count_parameters,
    forward_stats,
    generation_stats,
    model_bytes,
    ratios,
    size_on_disk,
)
from pgprune_core.evaluation.perplexity import perplexity
from pgprune_core.interfaces import EvalContext, Evaluator
from pgprune_core.plugin.hookspecs import hookimpl


class PerplexityEvaluator(Evaluator):
    """Perplexity on each evaluation set: texts joined by blank lines, non-overlapping windows."""

    name = "perplexity"

    class Config(PluginConfig):
        #: window length; None = the evaluation section's seq_len (paper: 128; App. A.5: 2048)
        seq_len: int | None = Field(default=None, gt=1)
        #: windows per forward pass; None = the evaluation section's batch_size
        batch_size: int | None = Field(default=None, gt=0)
        #: score only the first N windows of each set (quick checks); None = all
        max_windows: int | None = Field(default=None, gt=0)
        #: evaluation sets to use (names of data.eval / eval file stems); None = all
        sets: list[str] | None = None

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        config: PerplexityEvaluator.Config = self.config  # type: ignore[assignment]
        names = list(ctx.datasets) if config.sets is None else config.sets
        if not names:
            raise DataError("perplexity needs an evaluation set: pass --eval NAME or --eval-file PATH")
        unknown = [n for n in names if n not in ctx.datasets]
        if unknown:
            raise DataError(
                f"perplexity: unknown evaluation set(s) {', '.join(unknown)}; "
                f"available: {', '.join(ctx.datasets) or '(none)'}"
            )
        seq_len = config.seq_len or ctx.seq_len
        ppl: dict[str, float] = {}
        tokens: dict[str, int] = {}
        for name in names:
            stream = tokenize_source(ctx.datasets[name], ctx.tokenizer, joining="text",
                                     reporter=ctx.reporter)
            result = perplexity(
                ctx.model, stream, seq_len=seq_len,
                batch_size=config.batch_size or ctx.batch_size, device=ctx.device,
                max_windows=config.max_windows, reporter=ctx.reporter, name=name,
            )
            ppl[name] = result.ppl
            tokens[name] = result.tokens
        return {"ppl": ppl, "ppl_tokens": tokens, "ppl_seq_len": seq_len}


class EfficiencyEvaluator(Evaluator):
    """Parameters, size on disk, peak memory and latency of a forward, generation tokens/s."""

    name = "efficiency"

    class Config(PluginConfig):
        #: forward-pass shape for latency and peak memory (paper App. A.5: 4 x 2048 on GPU)
        batch_size: int = Field(default=1, gt=0)
        #: None = the evaluation section's seq_len
        seq_len: int | None = Field(default=None, gt=0)
        #: timed repeats (the median is reported) after `warmup` untimed ones
        repeats: int = Field(default=5, gt=0)
        warmup: int = Field(default=1, ge=0)
        #: tokens generated per timing of greedy generation; 0 skips generation
        generate_tokens: int = Field(default=32, ge=0)
        generate_repeats: int = Field(default=3, gt=0)
        prompt_len: int = Field(default=16, gt=0)

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        config: EfficiencyEvaluator.Config = self.config  # type: ignore[assignment]
        model = ctx.model
        params = count_parameters(model)
        metrics: dict[str, Any] = {
            "params": params.total,
            "params_non_embedding": params.non_embedding,
            "model_bytes": model_bytes(model),
        }
        if ctx.model_path is not None and ctx.model_path.exists():
            metrics["disk_bytes"] = size_on_disk(ctx.model_path)
        metrics["forward"] = forward_stats(
            model, ctx.device, batch_size=config.batch_size,
            seq_len=config.seq_len or ctx.seq_len, repeats=config.repeats,
            warmup=config.warmup, seed=ctx.seed,
        )
        if config.generate_tokens:
            tokenizer = ctx.tokenizer
            pad = getattr(tokenizer, "pad_token_id", None)
            if pad is None:
                pad = getattr(tokenizer, "eos_token_id", None)
            metrics["generation"] = generation_stats(
                model, ctx.device, batch_size=config.batch_size, prompt_len=config.prompt_len,
                new_tokens=config.generate_tokens, repeats=config.generate_repeats,
                seed=ctx.seed, pad_token_id=pad,
            )
        if ctx.reference is not None:
            metrics["vs_dense"] = ratios(metrics, ctx.reference)
        return metrics


@hookimpl
def pgprune_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(PerplexityEvaluator)
    register(EfficiencyEvaluator)
