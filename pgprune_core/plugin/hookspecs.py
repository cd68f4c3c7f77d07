"""pluggy hook specifications: the whole contract between pgprune and its plugins.

Hooks are grouped by phase, as in pytest's ``hookspec.py``.  Registration hooks receive a
``register`` callback (the style of simonw/llm's ``register_models``) so that the core owns
its tables: it records which distribution registered what and refuses duplicates loudly.

A plugin module implements any subset of these with ``@pgprune_core.hookimpl``::

    from pgprune_core import hookimpl

    @hookimpl
    def pgprune_register_estimators(register):
        register(MyEstimator)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import typer

    from pgprune_core.interfaces import (
        Estimator,
        Evaluator,
        Granularity,
        Initializer,
        ModelAdapter,
        Projector,
    )

hookspec = pluggy.HookspecMarker("pgprune")
#: The marker of hook implementations (re-exported as ``pgprune_core.hookimpl``).
hookimpl = pluggy.HookimplMarker("pgprune")

# -- registration phase: called once, when the plugin manager is built ----------------


@hookspec
def pgprune_register_estimators(register: Callable[[type[Estimator]], None]) -> None:
    """Register :class:`~pgprune_core.interfaces.Estimator` classes (reinforce, gumbel, ...)."""


@hookspec
def pgprune_register_adapters(register: Callable[[type[ModelAdapter]], None]) -> None:
    """Register :class:`~pgprune_core.interfaces.ModelAdapter` classes (llama, mistral, ...)."""


@hookspec
def pgprune_register_granularities(register: Callable[[type[Granularity]], None]) -> None:
    """Register :class:`~pgprune_core.interfaces.Granularity` classes (channel, head, attention, mlp, layer)."""


@hookspec
def pgprune_register_initializers(register: Callable[[type[Initializer]], None]) -> None:
    """Register :class:`~pgprune_core.interfaces.Initializer` classes (random, wanda-sp, ...)."""


@hookspec
def pgprune_register_projectors(register: Callable[[type[Projector]], None]) -> None:
    """Register :class:`~pgprune_core.interfaces.Projector` classes (bisection)."""


@hookspec
def pgprune_register_evaluators(register: Callable[[type[Evaluator]], None]) -> None:
    """Register :class:`~pgprune_core.interfaces.Evaluator` classes (perplexity, lm-eval, ...)."""


@hookspec
def pgprune_register_commands(app: typer.Typer) -> None:
    """Add sub-commands to the ``pgprune`` Typer app (``app.command()(fn)``)."""


# -- model phase ------------------------------------------------------------------------


@hookspec(firstresult=True)
def pgprune_resolve_adapter(model_config: Any) -> str | None:
    """Return the name of the adapter that handles ``model_config`` (a transformers
    ``PretrainedConfig``), or ``None`` to let another plugin answer.

    The first non-``None`` answer wins; it is how ``--adapter`` may be omitted.
    """
