"""Entry point ``lm-eval`` of the ``pgprune`` group: registers the evaluator."""

from __future__ import annotations

from pgprune_core import hookimpl

from .evaluator import LmEvalEvaluator


@hookimpl
def pgprune_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(LmEvalEvaluator)
