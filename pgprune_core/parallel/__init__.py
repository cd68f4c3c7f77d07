"""Data-parallel runs under ``torchrun``: which share of the work a process does, and the
collectives that make every process end a step with the same numbers.

The definition a K-process run keeps (docs/scaling.md): **a K-process step is the
one-process step**, with the forward passes split.  Every rank holds the same probabilities
and the same random generator, so it draws the same masks; the rows of the step's batched
forward (``n_samples x batch`` sequences) are split into K contiguous shares; each rank
evaluates its share and the per-row losses are gathered, so every rank holds all the
step's losses and applies the same update.  Nothing else is exchanged: one all-gather of
``n_samples x batch`` numbers per step.
"""

from pgprune_core.parallel.ranks import (
    SINGLE,
    Ranks,
    from_environment,
    launched_by_torchrun,
    share,
)

__all__ = ["SINGLE", "Ranks", "from_environment", "launched_by_torchrun", "share"]
