"""The base of every plugin's options model (kept apart from config.py to avoid cycles)."""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model


class PluginConfig(BaseModel):
    """Options of one plugin.  Its ``name`` is the literal ``Literal["their-name"] =
    "their-name"``, derived from the plugin class's ``name`` (:func:`with_name_literal`, applied
    by :class:`pgprune_core.interfaces.Plugin` to every subclass) unless the Config declares
    it itself, as older plugins do; the core uses that literal as the discriminator of the union of all registered plugins of
    a kind, so a third-party plugin's options validate exactly like a built-in's."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str


class InitializerConfig(PluginConfig):
    """Options every initializer has: how its scores become initial probabilities."""

    #: sigmoid-norm: s = sigmoid(zscore(x)), shifted to the keep ratio (paper A.11, main
    #: setting); score-const: s = const for the units the metric keeps, 1 - const otherwise
    transform: Literal["sigmoid-norm", "score-const"] = "sigmoid-norm"
    #: the c of score-const (paper: 0.8)
    const: float = Field(default=0.8, gt=0.5, lt=1.0)


def declares_name(config: type[PluginConfig]) -> bool:
    """True when ``config`` itself (not a base, nor :func:`with_name_literal`) declares
    ``name`` as a literal."""
    if config in _DERIVED or "name" not in inspect.get_annotations(config):
        return False
    field = config.model_fields.get("name")
    return field is not None and get_origin(field.annotation) is Literal


#: the Configs :func:`with_name_literal` made (their ``name`` is derived, not declared)
_DERIVED: weakref.WeakSet[type] = weakref.WeakSet()


def with_name_literal(config: type[PluginConfig], name: str, qualname: str | None = None,
                      module: str | None = None) -> type[PluginConfig]:
    """``config`` with its ``name`` field set to ``Literal[name] = name``: ``config`` itself
    when it already has that default, else a subclass of it (named ``Config``, with the given
    ``__qualname__`` and ``__module__``) that only adds the field, so a plugin states its
    name once, on the plugin class."""
    field = config.model_fields.get("name")
    if field is not None and field.default == name:
        return config
    fields: dict[str, Any] = {"name": (Literal[name], name)}  # type: ignore[valid-type]
    derived = create_model("Config", __base__=config,  # type: ignore[call-overload]
                           __module__=module or config.__module__, **fields)
    derived.__qualname__ = qualname or config.__qualname__
    derived.__doc__ = config.__doc__
    _DERIVED.add(derived)
    return derived


def declared_config(config: type[PluginConfig]) -> type[PluginConfig]:
    """The Config class as its author wrote it: the base of a :func:`with_name_literal`
    subclass (which adds only ``name``), else ``config`` itself."""
    while config in _DERIVED:
        config = config.__mro__[1]
    return config
