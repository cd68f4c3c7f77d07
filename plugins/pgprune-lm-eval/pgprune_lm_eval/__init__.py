"""pgprune evaluator ``lm-eval``: zero-shot tasks through lm-evaluation-harness."""

from .evaluator import DEFAULT_TASKS, LmEvalEvaluator

__all__ = ["DEFAULT_TASKS", "LmEvalEvaluator"]
