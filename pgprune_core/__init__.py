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
    ModelAdapter,
    ModelSource,
    Plugin,
    Projector,
    StepContext,
    StepStats,
)
from pgprune_core.plugin.hookspecs import hookimpl

# The subpackage pgprune_core.run shares its name with the function below: import it now,
# so that its import (which binds the attribute ``run`` of this package) happens before
# the function is defined, and ``pgprune_core.run(...)`` stays the function.
import pgprune_core.run as _run_package  # noqa: F401  isort: skip

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


def load_pruned(path: Any, **kwargs: Any) -> Any:
    """Load a model saved by pgprune (per-layer shapes rebuilt), ready for inference."""
    from pgprune_core.model.surgery import load_pruned as _load

    return _load(path, **kwargs)


if TYPE_CHECKING:  # pragma: no cover
    from pgprune_core.config.sections import RunConfig  # noqa: F401
