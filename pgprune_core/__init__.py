"""pgprune: structural pruning of LLMs by policy-gradient optimisation.

The public API: the hook marker plugins use, the plugin interfaces, and the entry points
of a run.  Everything else is internal and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgprune_core.config.base import InitializerConfig, PluginConfig
from pgprune_core.errors import PgpruneError
from pgprune_core.interfaces import (
    Constraint,
    Estimator,
    EvalContext,
    Evaluator,
    Granularity,
    InitContext,
    Initializer,
    LoadedModel,
    LossOracle,
    ModelAdapter,
    ModelSource,
    Plugin,
    Projector,
    StepContext,
    StepStats,
)
from pgprune_core.plugin.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Constraint",
    "Estimator",
    "EvalContext",
    "Evaluator",
    "Granularity",
    "InitContext",
    "Initializer",
    "InitializerConfig",
    "LoadedModel",
    "LossOracle",
    "ModelAdapter",
    "ModelSource",
    "PgpruneError",
    "Plugin",
    "PluginConfig",
    "Projector",
    "StepContext",
    "StepStats",
    "hookimpl",
    "load_pruned",
    "run",
]


def run(config: Any = None, **overrides: Any) -> Any:
    """Run pgprune from Python: ``run(pruning__prune_rate=0.3)``, ``run("run.yaml")``
    or ``run(RunConfig)``.

    Keyword arguments are dotted keys with ``__`` for dots: ``estimator__lr=3e-2``.
    """
    import json

    from pgprune_core.config.resolve import merge, resolve_config, validate_config
    from pgprune_core.config.sections import RunConfig
    from pgprune_core.run.pipeline import run_pipeline

    flat = {key.replace("__", "."): value for key, value in overrides.items()}
    if isinstance(config, RunConfig):
        if flat:
            config = validate_config(merge(json.loads(config.model_dump_json()), flat))
    else:
        config = resolve_config(config, None, flat)
    return run_pipeline(config)


#: the function itself: the subpackage ``pgprune_core.run`` takes the attribute ``run`` once
#: imported, and calling that package calls this (see pgprune_core/run/__init__.py)
_run_function = run


def load_pruned(path: Any, **kwargs: Any) -> Any:
    """Load a model saved by pgprune (per-layer shapes rebuilt), ready for inference."""
    from pgprune_core.model.surgery import load_pruned as _load

    return _load(path, **kwargs)


if TYPE_CHECKING:  # pragma: no cover
    from pgprune_core.config.sections import RunConfig  # noqa: F401
