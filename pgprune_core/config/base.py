"""The base of every plugin's options model (kept apart from config.py to avoid cycles)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PluginConfig(BaseModel):
    """Options of one plugin.  Subclasses declare ``name: Literal["their-name"] = "their-name"``;
    the core uses that literal as the discriminator of the union of all registered plugins of
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
