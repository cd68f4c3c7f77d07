"""Measurements of a model: perplexity, efficiency (parameters, speed, size), peak memory,
and the built-in evaluators that adapt them to the :class:`~pgprune_core.interfaces.Evaluator`
interface.
"""
