"""The plugin manager: built-ins first, then every ``pgprune`` entry point.

Each entry point is imported in its own ``try`` so that one broken third-party plugin is
reported (plugin, distribution, version, error) and the others still load.  The registry
(:mod:`pgprune_core.plugin.registry`) then asks every plugin, one at a time, to register its
classes, so each registration is attributed to the distribution that made it.

``PGPRUNE_DISABLE_PLUGINS=a,b`` skips plugins (entry-point or built-in names) and
individual registered components (``reinforce``, ``vicuna``) by name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

import pluggy

from pgprune_core.errors import first_line
from pgprune_core.plugin import hookspecs
from pgprune_core.plugin.hookspecs import hookimpl

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "ESSENTIAL_PLUGINS", "PluginSet", "hookimpl"]

ENTRY_POINT_GROUP = "pgprune"
DISABLE_ENV = "PGPRUNE_DISABLE_PLUGINS"

#: Built-in plugins, registered like any other plugin (name -> module path).  Each module
#: holds its classes and the hook implementation that registers them (pytest's
#: ``default_plugins``, simonw/llm's ``default_plugins/``).
DEFAULT_PLUGINS: dict[str, str] = {
    "builtin-channel": "pgprune_core.model.granularity.channel",
    "builtin-head": "pgprune_core.model.granularity.head",
    "builtin-layer": "pgprune_core.model.granularity.layer",
    "builtin-attention": "pgprune_core.model.granularity.attention",
    "builtin-mlp": "pgprune_core.model.granularity.mlp",
    "builtin-expert": "pgprune_core.model.granularity.expert",
    "builtin-bisection": "pgprune_core.optim.projection",
    "builtin-none": "pgprune_core.optim.no_estimator",
    "builtin-random": "pgprune_core.initializers.random_scores",
    "builtin-uniform": "pgprune_core.initializers.uniform",
    "builtin-magnitude": "pgprune_core.initializers.magnitude",
    "builtin-wanda-sp": "pgprune_core.initializers.wanda_sp",
    "builtin-layerwise-ppl": "pgprune_core.initializers.layerwise_ppl",
    "builtin-taylor": "pgprune_core.initializers.taylor",
    "builtin-expert-frequency": "pgprune_core.initializers.expert_frequency",
    "builtin-evaluators": "pgprune_core.evaluation.evaluators",
    "builtin-compare": "pgprune_core.compare.command",
}

#: Built-ins every run needs (the unit kinds and the projection): ``PGPRUNE_DISABLE_PLUGINS``
#: does not remove them, neither by plugin name nor by component name.
ESSENTIAL_PLUGINS: frozenset[str] = frozenset(
    {"builtin-channel", "builtin-head", "builtin-layer", "builtin-attention", "builtin-mlp",
     "builtin-expert", "builtin-bisection"}
)


@dataclass(frozen=True)
class PluginOrigin:
    """Where a plugin came from: its plugin name and the distribution that ships it."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be imported or could not register its classes."""

    plugin: str
    distribution: str
    version: str
    error: str

    def __str__(self) -> str:
        return (
            f"plugin {self.plugin!r} from {self.distribution} {self.version} failed: {self.error}"
        )


def disabled_names() -> frozenset[str]:
    """Names listed in ``PGPRUNE_DISABLE_PLUGINS`` (comma separated, blanks ignored)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _core_version() -> str:
    try:
        return metadata.version("pgprune-core")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _describe_exception(exc: BaseException) -> str:
    """``TypeName: first line`` of a plugin's exception."""
    text = first_line(exc)
    return type(exc).__name__ if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


class PluginSet:
    """A pluggy ``PluginManager`` plus the origin of every plugin and the load failures."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("pgprune")
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, PluginOrigin] = {}
        self.failures: list[LoadFailure] = []
        self.disabled = disabled_names()
        version = _core_version()
        for name, module_path in DEFAULT_PLUGINS.items():
            if name in self.disabled and name not in ESSENTIAL_PLUGINS:
                continue
            try:
                module = importlib.import_module(module_path)
            except Exception as exc:  # reported like any plugin, so the rest still works
                self.failures.append(LoadFailure(name, "pgprune-core", version, _describe_exception(exc)))
                continue
            self.add(module, PluginOrigin(name, "pgprune-core", version))
        if load_entry_points:
            self._load_entry_points()

    def add(self, plugin: object, origin: PluginOrigin) -> None:
        """Register one plugin object (usually a module) under ``origin.plugin``."""
        self.pm.register(plugin, name=origin.plugin)
        self.origins[origin.plugin] = origin

    def remove(self, name: str) -> None:
        """Unregister a plugin by name (tests use this in ``finally`` blocks)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.origins.pop(name, None)
        self.failures = [f for f in self.failures if f.plugin != name]

    def _load_entry_points(self) -> None:
        seen: set[str] = set()
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown"
            dist_version = dist.version if dist is not None else "unknown"
            if ep.name in self.disabled or ep.name in seen:
                continue
            seen.add(ep.name)
            if self.pm.get_plugin(ep.name) is not None:
                self.failures.append(
                    LoadFailure(
                        ep.name,
                        dist_name,
                        dist_version,
                        f"the plugin name {ep.name!r} is already taken by "
                        f"{self.origins[ep.name]}",
                    )
                )
                continue
            try:
                module: ModuleType = ep.load()
                self.add(module, PluginOrigin(ep.name, dist_name, dist_version))
            except Exception as exc:  # a broken third-party plugin must not break pgprune
                self.failures.append(
                    LoadFailure(ep.name, dist_name, dist_version, _describe_exception(exc))
                )

    def origin_of(self, plugin: object) -> PluginOrigin:
        name = self.pm.get_name(plugin) or repr(plugin)
        return self.origins.get(name, PluginOrigin(name, "unknown", "unknown"))
