"""What every built-in initializer checks before scoring, and how it reads calibration data.

The pipeline already refuses an initializer whose ``kinds`` miss a granularity of the run,
but initializers are also called directly (benchmarks, notebooks, other plugins), so each
one checks its own context and fails with a one-line :class:`~pgprune_core.errors.PgpruneError`
instead of an ``IndexError`` deep inside a tensor operation.
"""

from __future__ import annotations

import abc
import warnings

import torch

from pgprune_core.errors import ConfigError, DataError
from pgprune_core.interfaces import InitContext, Initializer
from pgprune_core.model.placement import has_offloaded_weights


class CheckedInitializer(Initializer):
    """An initializer whose :meth:`scores` validates the context, then calls :meth:`compute`."""

    def scores(self, ctx: InitContext) -> torch.Tensor:
        check_context(self, ctx)
        scores = self.compute(ctx)
        return scores.detach().to(device="cpu", dtype=torch.float64)

    @abc.abstractmethod
    def compute(self, ctx: InitContext) -> torch.Tensor:
        """float [n] over ``ctx.layout`` (the context is already known to be valid)."""


def check_context(initializer: Initializer, ctx: InitContext) -> None:
    """Refuse granularities the initializer cannot score and a missing calibration set."""
    name = initializer.name
    unsupported = [kind for kind in ctx.layout.kinds if kind not in initializer.kinds]
    if unsupported:
        raise ConfigError(
            f"initializer '{name}' cannot score {', '.join(unsupported)} units; "
            f"it scores: {', '.join(sorted(initializer.kinds))}"
        )
    check_weights_reachable(type(initializer), ctx.model)
    if initializer.needs_calibration and ctx.calibration is None:
        raise DataError(
            f"initializer '{name}' needs calibration data, but none was given "
            f"(set data.calib or data.calib_file, or choose random, uniform or magnitude)"
        )


def check_weights_reachable(initializer: type[Initializer], model: torch.nn.Module) -> None:
    """Refuse an initializer that needs the weights' gradients on a model whose weights
    are offloaded (accelerate keeps them on ``meta`` between forwards)."""
    if initializer.needs_weight_gradients and has_offloaded_weights(model):
        raise ConfigError(
            f"initializer '{initializer.name}' needs gradients of the weights, which offloaded "
            f"weights (model.max_memory, disk offload) cannot hold; use wanda-sp or magnitude, "
            f"or give the model enough device memory to load without offload"
        )


def calibration_batches(
    ctx: InitContext, n_sequences: int, seq_len: int, batch_size: int, *, shard: bool = False
) -> list[torch.Tensor]:
    """The run's ``n_sequences`` calibration windows of ``seq_len`` tokens, regrouped into
    batches of ``batch_size`` rows on ``ctx.device``.

    ``shard``: under ``torchrun``, only this rank's contiguous share of the windows (maybe
    none); the initializer then sums its statistics over the ranks (``ctx.ranks``).  An
    initializer that evaluates through ``ctx.oracle`` keeps every window: the oracle
    already shares its rows.

    The stream's own batch size belongs to the optimisation loop; initializers batch for
    their own memory needs (one layer of activations, or one backward pass).
    """
    if ctx.calibration is None:  # check_context normally catches this first
        raise DataError("no calibration data was given")
    windows = torch.cat([batch.reshape(-1, seq_len) for batch in ctx.calibration(n_sequences, seq_len)])
    if windows.shape[0] == 0:
        raise DataError(f"the calibration data gave no windows of {seq_len} tokens")
    if windows.shape[0] < n_sequences:
        # the provider broke its contract (n_sequences windows in all); score on what came
        warnings.warn(
            f"calibration gave {windows.shape[0]} of the {n_sequences} windows asked for; "
            f"scoring on {windows.shape[0]}",
            RuntimeWarning,
            stacklevel=2,
        )
    windows = windows[:n_sequences]
    if shard:
        windows = windows[ctx.ranks.share(windows.shape[0])]
    return list(windows.to(device=ctx.device, dtype=torch.long).split(batch_size))
