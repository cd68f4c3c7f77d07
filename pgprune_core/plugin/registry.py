"""Typed look-ups of the registered plugin classes: ``estimators()``, ``adapters()``, ...

The registry asks each plugin in turn to call ``register(cls)`` for every class it ships,
checks the class (a ``name``, a pydantic ``Config`` whose ``name`` literal matches), and
keeps one table per kind.  A name registered twice is refused with both origins named;
the refusal is recorded as a load failure of the second plugin, and every command warns
about it, so the rest of pgprune keeps working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, overload

from pgprune_core.errors import (
    DuplicatePluginError,
    MissingPluginError,
    PluginError,
    UnknownPluginError,
)
from pgprune_core.interfaces import (
    Estimator,
    Evaluator,
    Granularity,
    Initializer,
    ModelAdapter,
    Plugin,
    Projector,
)
from pgprune_core.plugin.manager import (
    ESSENTIAL_PLUGINS,
    LoadFailure,
    PluginOrigin,
    PluginSet,
    _describe_exception,
)

#: kind -> (registration hook, base class)
#: The plugins this project publishes as separate distributions, by (kind, name): a lookup
#: of one that is not installed names the distribution instead of "unknown".  ``pgprune``
#: (the batteries-included distribution) installs the defaults, ``pgprune[all]`` every one.
PROVIDED_BY: dict[tuple[str, str], str] = {
    ("adapter", "llama"): "pgprune-llama",
    ("adapter", "vicuna"): "pgprune-llama",
    ("adapter", "mistral"): "pgprune-mistral",
    ("adapter", "qwen2"): "pgprune-qwen2",
    ("adapter", "qwen3"): "pgprune-qwen3",
    ("adapter", "phi3"): "pgprune-phi3",
    ("adapter", "gemma2"): "pgprune-gemma",
    ("adapter", "gemma3"): "pgprune-gemma",
    ("adapter", "gemma3-multimodal"): "pgprune-gemma",
    ("adapter", "mixtral"): "pgprune-mixtral",
    ("adapter", "qwen2_moe"): "pgprune-qwen-moe",
    ("adapter", "qwen3_moe"): "pgprune-qwen-moe",
    ("estimator", "reinforce"): "pgprune-reinforce",
    ("estimator", "gumbel"): "pgprune-gumbel",
    ("estimator", "ppo"): "pgprune-ppo",
    ("evaluator", "lm-eval"): "pgprune-lm-eval",
}

#: transformers ``model_type`` -> the adapter this project publishes for it
ADAPTER_FOR_MODEL_TYPE: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3-multimodal",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen2_moe",
    "qwen3_moe": "qwen3_moe",
}

KINDS: dict[str, tuple[str, type[Plugin]]] = {
    "estimator": ("pgprune_register_estimators", Estimator),
    "adapter": ("pgprune_register_adapters", ModelAdapter),
    "granularity": ("pgprune_register_granularities", Granularity),
    "initializer": ("pgprune_register_initializers", Initializer),
    "projector": ("pgprune_register_projectors", Projector),
    "evaluator": ("pgprune_register_evaluators", Evaluator),
}


@dataclass(frozen=True)
class Spec:
    """One registered plugin class and where it came from."""

    kind: str
    name: str
    cls: type[Plugin]
    origin: PluginOrigin

    @property
    def description(self) -> str:
        return self.cls.describe()

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.origin.distribution,
            "version": self.origin.version,
            "plugin": self.origin.plugin,
            "description": self.description,
        }


class Registry:
    """The tables of registered plugin classes, built from a :class:`PluginSet`."""

    def __init__(self, plugins: PluginSet) -> None:
        self.plugins = plugins
        self.tables: dict[str, dict[str, Spec]] = {}
        self.failures: list[LoadFailure] = []
        self.rebuild()

    # -- building ---------------------------------------------------------------------
    def rebuild(self) -> None:
        """Re-ask every plugin to register (after a plugin was added or removed)."""
        self.tables = {kind: {} for kind in KINDS}
        self.failures = list(self.plugins.failures)
        disabled = self.plugins.disabled
        for kind, (hook_name, base) in KINDS.items():
            hook = getattr(self.plugins.pm.hook, hook_name)
            # get_hookimpls() lists implementations in registration (load) order
            for impl in hook.get_hookimpls():
                origin = self.plugins.origin_of(impl.plugin)
                if any(f.plugin == origin.plugin for f in self.failures):
                    continue
                register = self._make_register(kind, base, origin, disabled)
                try:
                    impl.function(register=register)
                except Exception as exc:
                    self.failures.append(
                        LoadFailure(
                            origin.plugin,
                            origin.distribution,
                            origin.version,
                            _describe_exception(exc),
                        )
                    )

    def _make_register(
        self, kind: str, base: type[Plugin], origin: PluginOrigin, disabled: frozenset[str]
    ) -> Callable[[type[Any]], None]:
        table = self.tables[kind]

        def register(cls: type[Any]) -> None:
            check_plugin_class(cls, kind, base)
            if cls.name in disabled and origin.plugin not in ESSENTIAL_PLUGINS:
                return
            if cls.name in table:
                first = table[cls.name].origin
                raise DuplicatePluginError(
                    f"{kind} {cls.name!r} is registered twice: by {first} and by {origin}; "
                    f"the second registration was refused"
                )
            table[cls.name] = Spec(kind, cls.name, cls, origin)

        return register

    # -- look-ups ---------------------------------------------------------------------
    def specs(self, kind: str) -> dict[str, Spec]:
        if kind not in self.tables:
            raise KeyError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        return dict(self.tables[kind])

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def get(self, kind: str, name: str) -> Spec:
        table = self.specs(kind)
        if name not in table:
            distribution = PROVIDED_BY.get((kind, name))
            if distribution is not None:
                raise MissingPluginError(kind, name, distribution)
            raise UnknownPluginError(kind, name, list(table))
        return table[name]

    @overload
    def cls(self, kind: Literal["estimator"], name: str) -> type[Estimator]: ...
    @overload
    def cls(self, kind: Literal["adapter"], name: str) -> type[ModelAdapter]: ...
    @overload
    def cls(self, kind: Literal["granularity"], name: str) -> type[Granularity]: ...
    @overload
    def cls(self, kind: Literal["initializer"], name: str) -> type[Initializer]: ...
    @overload
    def cls(self, kind: Literal["projector"], name: str) -> type[Projector]: ...
    @overload
    def cls(self, kind: Literal["evaluator"], name: str) -> type[Evaluator]: ...
    @overload
    def cls(self, kind: str, name: str) -> type[Plugin]: ...
    def cls(self, kind: str, name: str) -> type[Plugin]:
        """The class registered as ``name`` (typed by ``kind`` when it is a literal)."""
        return self.get(kind, name).cls

    @overload
    def classes(self, kind: Literal["estimator"]) -> dict[str, type[Estimator]]: ...
    @overload
    def classes(self, kind: Literal["adapter"]) -> dict[str, type[ModelAdapter]]: ...
    @overload
    def classes(self, kind: Literal["granularity"]) -> dict[str, type[Granularity]]: ...
    @overload
    def classes(self, kind: Literal["initializer"]) -> dict[str, type[Initializer]]: ...
    @overload
    def classes(self, kind: Literal["projector"]) -> dict[str, type[Projector]]: ...
    @overload
    def classes(self, kind: Literal["evaluator"]) -> dict[str, type[Evaluator]]: ...
    @overload
    def classes(self, kind: str) -> dict[str, type[Plugin]]: ...
    def classes(self, kind: str) -> dict[str, type[Any]]:
        """The registered classes of ``kind`` by name, in registration order."""
        return {name: spec.cls for name, spec in self.specs(kind).items()}

    def all_specs(self) -> list[Spec]:
        return [spec for kind in KINDS for _, spec in sorted(self.tables[kind].items())]

    def resolve_adapter(self, model_config: Any) -> str | None:
        """Ask the ``firstresult`` hook which adapter handles ``model_config``."""
        name = self.plugins.pm.hook.pgprune_resolve_adapter(model_config=model_config)
        if name is not None and name not in self.tables["adapter"]:
            raise PluginError(f"a plugin resolved the model to adapter {name!r}, which is not registered")
        return name

    def register_commands(self, app: Any) -> None:
        for impl in self.plugins.pm.hook.pgprune_register_commands.get_hookimpls():
            origin = self.plugins.origin_of(impl.plugin)
            try:
                impl.function(app=app)
            except Exception as exc:
                self.failures.append(
                    LoadFailure(origin.plugin, origin.distribution, origin.version,
                                _describe_exception(exc))
                )


def check_plugin_class(cls: Any, kind: str, base: type[Plugin]) -> None:
    """Refuse a class that does not honour the plugin contract, with a precise message."""
    label = getattr(cls, "__qualname__", repr(cls))
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise PluginError(f"{label} was registered as a {kind} but is not a subclass of {base.__name__}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{kind} class {label} has no 'name' string attribute")
    config = getattr(cls, "Config", None)
    from pgprune_core.config.base import PluginConfig  # local: avoid an import cycle at module load

    if not (isinstance(config, type) and issubclass(config, PluginConfig)):
        raise PluginError(f"{kind} {name!r}: Config must subclass pgprune_core.PluginConfig")
    field = config.model_fields.get("name")
    if field is None or field.default != name:
        raise PluginError(
            f"{kind} {name!r}: its Config needs `name: Literal[{name!r}] = {name!r}`"
        )


# -- the process-wide registry ----------------------------------------------------------
_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The registry of this process, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry(PluginSet())
    return _REGISTRY


def reset_registry() -> None:
    """Forget the registry (it is rebuilt, re-reading entry points, on next use)."""
    global _REGISTRY
    _REGISTRY = None


@contextlib.contextmanager
def temporary_plugin(plugin: object, name: str, distribution: str = "test") -> Iterator[Registry]:
    """Register ``plugin`` for the duration of a ``with`` block, then unregister it.

    When ``plugin`` is already registered (the plugin under test is installed, so its entry
    point loaded it), the registry is yielded as it is and nothing is removed afterwards."""
    registry = get_registry()
    if registry.plugins.pm.is_registered(plugin):
        yield registry
        return
    registry.plugins.add(plugin, PluginOrigin(name, distribution, "0"))
    try:
        registry.rebuild()
        yield registry
    finally:
        registry.plugins.remove(name)
        registry.rebuild()


def estimators() -> dict[str, type[Estimator]]:
    """Registered estimator classes by name."""
    return get_registry().classes("estimator")


def adapters() -> dict[str, type[ModelAdapter]]:
    """Registered adapter classes by name."""
    return get_registry().classes("adapter")


def granularities() -> dict[str, type[Granularity]]:
    """Registered granularity classes by name."""
    return get_registry().classes("granularity")


def initializers() -> dict[str, type[Initializer]]:
    """Registered initializer classes by name."""
    return get_registry().classes("initializer")


def projectors() -> dict[str, type[Projector]]:
    """Registered projector classes by name."""
    return get_registry().classes("projector")


def evaluators() -> dict[str, type[Evaluator]]:
    """Registered evaluator classes by name."""
    return get_registry().classes("evaluator")
