"""The estimator contract for third parties: the LossOracle protocol, the sampled-loss
skeleton, forwards_per_step, and plugin names stated once."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import pytest
import torch

from pgprune_core import Estimator, Initializer, PluginConfig, StepContext
from pgprune_core.config.base import with_name_literal
from pgprune_core.interfaces import LossOracle
from pgprune_core.model import masking
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.optim.sampled import SampledLossEstimator, Samples
from pgprune_core.optim.step_size import StepSizeConfig
from pgprune_core.testing.oracles import QuadraticOracle


def test_oracles_satisfy_the_loss_oracle_protocol() -> None:
    assert LossOracle in masking.LossOracle.__mro__
    assert isinstance(QuadraticOracle(torch.ones(3)), LossOracle)
    assert not isinstance(object(), LossOracle)


class _Mean(SampledLossEstimator):
    """Moves every probability against its advantage-weighted mask (a toy)."""

    name = "toy-mean"
    skip_extra = ("grad_norm", "update_abs_mean")

    class Config(StepSizeConfig):
        n_samples: int = 3
        baseline: Literal["moving-average", "none", "leave-one-out"] = "moving-average"
        window: int = 5

    def update(self, ctx: StepContext, samples: Samples, advantages: torch.Tensor,
               lr: float | None) -> dict[str, float]:
        assert lr is not None
        grad = advantages @ samples.masks.to(torch.float64) / advantages.numel()
        ctx.policy.probs = ctx.project(ctx.policy.probs - lr * grad)
        return {"grad_norm": float(grad.norm()), "update_abs_mean": 0.5}


def _ctx(policy: BernoulliPolicy, oracle: Any, step: int = 0) -> StepContext:
    return StepContext(policy=policy, batch=torch.zeros(1, 2, dtype=torch.long), oracle=oracle,
                       project=lambda z: z.clamp(0, 1), step=step, total_steps=10,
                       generator=torch.Generator().manual_seed(0))


def _policy(n: int = 4) -> BernoulliPolicy:
    return BernoulliPolicy(torch.full((n,), 0.5, dtype=torch.float64))


def test_sampled_skeleton_reports_baseline_lr_and_state() -> None:
    estimator = _Mean()
    oracle = QuadraticOracle(torch.arange(4, dtype=torch.float64))
    stats = estimator.step(_ctx(_policy(), oracle))
    assert oracle.forward_passes == 3
    assert stats.baseline is not None and not stats.skipped
    assert set(stats.extra) == {"lr", "grad_norm", "update_abs_mean", "skipped_total"}
    assert estimator.state_dict() == {"baseline": [stats.baseline], "skipped": 0}
    restored = _Mean()
    restored.load_state_dict(estimator.state_dict())
    assert restored.state_dict() == estimator.state_dict()


class _NaNOracle(QuadraticOracle):
    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        out = super().losses(batch, masks)
        out[0] = float("nan")
        return out


def test_sampled_skeleton_skips_non_finite_steps_and_checks_the_shape() -> None:
    estimator = _Mean()
    policy = _policy()
    before = policy.probs.clone()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        stats = estimator.step(_ctx(policy, _NaNOracle(torch.ones(4))))
    assert stats.skipped and torch.equal(policy.probs, before)
    assert stats.extra["grad_norm"] == 0.0
    assert stats.extra["update_abs_mean"] == 0.0 and stats.extra["skipped_total"] == 1.0

    class Short(QuadraticOracle):
        def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            return super().losses(batch, masks)[:1]

    with pytest.raises(RuntimeError, match="returned 1 losses for 3 masks"):
        estimator.step(_ctx(_policy(), Short(torch.ones(4))))


def test_forwards_per_step_defaults_to_n_samples_and_can_be_declared(registry) -> None:
    assert registry.cls("estimator", "reinforce")().forwards_per_step == 2
    assert registry.cls("estimator", "ppo")().forwards_per_step == 4
    assert registry.cls("estimator", "none")().forwards_per_step == 0

    class Twice(_Mean):
        name = "toy-twice"

        @property
        def forwards_per_step(self) -> int:
            return 2 * self.n_samples

    assert Twice().forwards_per_step == 6


def test_forwards_per_step_of_compare_asks_the_estimator(registry, monkeypatch) -> None:
    from types import SimpleNamespace

    from pgprune_core.compare.grid import forwards_per_step

    cls = registry.cls("estimator", "reinforce")
    monkeypatch.setattr(cls, "forwards_per_step", property(lambda self: 7))
    config: Any = SimpleNamespace(estimator=cls.Config(n_samples=2))
    assert forwards_per_step(config, registry) == 7


def test_plugin_name_is_stated_once() -> None:
    class Scorer(Initializer):
        """A toy."""

        name = "toy-scorer"

        def scores(self, ctx: Any) -> torch.Tensor:
            return torch.zeros(0)

    assert Scorer.Config.model_fields["name"].default == "toy-scorer"
    assert Scorer().config.name == "toy-scorer"
    with pytest.raises(ValueError):
        Scorer.Config(name="other")

    class Sub(Scorer):
        name = "toy-sub"

    assert Sub.Config.model_fields["name"].default == "toy-sub"
    assert Scorer.Config.model_fields["name"].default == "toy-scorer"
    for name in ("reinforce", "gumbel", "ppo"):
        from pgprune_core.plugin.registry import get_registry

        assert get_registry().cls("estimator", name)().config.name == name


def test_a_config_that_declares_its_name_is_kept() -> None:
    class Old(Estimator):
        """A third-party estimator written before names were derived."""

        name = "toy-old"

        class Config(PluginConfig):
            name: Literal["toy-old"] = "toy-old"
            x: int = 1

        def step(self, ctx: StepContext) -> Any:
            raise NotImplementedError

    assert Old.Config.__qualname__.endswith("Old.Config")
    assert "x" in Old.Config.model_fields and Old().config.name == "toy-old"
    assert with_name_literal(Old.Config, "toy-old") is Old.Config


def test_the_public_api_is_importable() -> None:
    import pgprune_core
    import pgprune_core.optim
    import pgprune_core.testing

    for module in (pgprune_core, pgprune_core.optim, pgprune_core.testing):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert pgprune_core.optim.SampledLossEstimator is SampledLossEstimator


def test_the_documented_example_estimator_runs() -> None:
    """docs/plugins.md's SignSGD, built on the skeleton, lowers a known expected loss."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class SignSGD" in b)
    import sys
    import types

    module = types.ModuleType("pgprune_signsgd_doc_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(block, "docs/plugins.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    cls = module.SignSGD
    assert cls.Config.model_fields["name"].default == "signsgd"
    oracle = QuadraticOracle(-torch.linspace(0.1, 1.0, 8, dtype=torch.float64))
    policy = _policy(8)
    estimator = cls(cls.Config(lr=1e-2))
    assert estimator.forwards_per_step == 2
    before = oracle.expected_loss(policy.probs)
    for step in range(50):
        stats = estimator.step(StepContext(policy, torch.zeros(1, 2, dtype=torch.long), oracle,
                                           lambda z: z.clamp(0, 1), step, 50,
                                           torch.Generator().manual_seed(step)))
    assert set(stats.extra) == {"lr", "grad_norm", "skipped_total"}
    assert oracle.expected_loss(policy.probs) < before
