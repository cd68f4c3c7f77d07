"""The ``gumbel`` estimator: relaxed masks, gradients to the masks only, straight-through,
the temperature schedule, optimisation under a budget, checkpoints."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from pgprune_gumbel import GumbelEstimator, temperature
from pydantic import ValidationError

from pgprune_core.model.structure import UnitLayout, UnitSet
from pgprune_core.optim.budget import Budget
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.optim.projection import project
from pgprune_core.plugin.registry import get_registry
from pgprune_core.testing import fixed_step_estimator, step_context
from pgprune_core.testing.oracles import QuadraticOracle

S0 = torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8, 0.9], dtype=torch.float64)


_ctx = step_context


def _plain(**options: Any) -> GumbelEstimator:
    """A fixed step size: constant schedule, no length scaling."""
    return fixed_step_estimator(GumbelEstimator, **options)


# -- the relaxed masks ------------------------------------------------------------------


def test_relaxed_masks_follow_the_binary_concrete_formula() -> None:
    estimator = _plain()
    free = torch.tensor([True, True, False, True, True, True])
    theta = S0[free].clone()
    masks = estimator.relaxed_masks(theta, free, 3, 0.5, torch.Generator().manual_seed(4))
    u = torch.rand((3, 5), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = torch.sigmoid((torch.log(theta / (1 - theta)) + torch.log(u / (1 - u))) / 0.5)
    torch.testing.assert_close(masks[:, free], expected)
    assert torch.equal(masks[:, 2], torch.ones(3, dtype=torch.float64))  # fixed unit
    assert ((masks > 0) & (masks < 1))[:, free].all()  # soft, not binary


def test_straight_through_forward_values_are_hard_bernoulli_samples() -> None:
    estimator = _plain(straight_through=True)
    free = torch.ones(6, dtype=torch.bool)
    theta = S0.clone().requires_grad_(True)
    masks = estimator.relaxed_masks(theta, free, 40_000, 0.7, torch.Generator().manual_seed(1))
    assert masks.requires_grad
    assert set(masks.detach().unique().tolist()) == {0.0, 1.0}
    # hard masks are Bernoulli(s): 1[logit(s) + logistic noise > 0]; 4 standard errors
    se = (S0 * (1 - S0) / masks.shape[0]).sqrt()
    assert torch.all((masks.detach().mean(0) - S0).abs() < 4 * se)


def test_straight_through_backward_is_the_soft_gradient() -> None:
    """For a linear loss dL/dm does not depend on m, so the straight-through gradient (soft
    path backward) equals the plain relaxed one for the same noise."""
    a = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    grads = []
    for straight_through in (False, True):
        policy = BernoulliPolicy(S0.clone())
        estimator = _plain(lr=1e-3, straight_through=straight_through, n_samples=4)
        estimator.step(_ctx(policy, QuadraticOracle(a), generator=torch.Generator().manual_seed(9)))
        grads.append((S0 - policy.probs) / 1e-3)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().min() > 0


def test_gradient_matches_autograd_of_the_relaxed_loss() -> None:
    """One step is s - lr * d/ds mean_i L(sigmoid((logit s + l_i) / tau))."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    oracle = QuadraticOracle(a, b)
    policy = BernoulliPolicy(S0.clone())
    estimator = _plain(lr=1e-3, n_samples=3, tau_start=0.5, tau_end=0.5)
    estimator.step(_ctx(policy, oracle, generator=torch.Generator().manual_seed(5)))
    s = S0.clone().requires_grad_(True)
    u = torch.rand((3, 6), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    m = torch.sigmoid((torch.log(s / (1 - s)) + torch.log(u / (1 - u))) / 0.5)
    (expected,) = torch.autograd.grad(oracle.loss(None, m).mean(), s)  # type: ignore[arg-type]
    torch.testing.assert_close((S0 - policy.probs) / 1e-3, expected, rtol=1e-6, atol=1e-9)
    assert oracle.backward_passes == 3 and oracle.forward_passes == 3 + 3


def test_temperature_schedule() -> None:
    assert temperature(0, 11, 1.0, 0.1, "exponential") == pytest.approx(1.0)
    assert temperature(10, 11, 1.0, 0.1, "exponential") == pytest.approx(0.1)
    assert temperature(5, 11, 1.0, 0.1, "exponential") == pytest.approx(math.sqrt(0.1))
    assert temperature(5, 11, 1.0, 0.1, "linear") == pytest.approx(0.55)
    assert temperature(50, 11, 1.0, 0.1, "linear") == pytest.approx(0.1)  # clipped
    stats = _plain(tau_start=2.0, tau_end=0.5).step(
        _ctx(BernoulliPolicy(S0.clone()), QuadraticOracle(torch.ones(6)), step=2, total_steps=3))
    assert stats.extra["tau"] == pytest.approx(0.5)


# -- with a real model: the gradient reaches the masks and nothing else -----------------


def test_backpropagates_to_the_mask_parameters_only() -> None:
    from pgprune_core.model.masking import LossOracle
    from pgprune_core.testing import tiny_model

    model = tiny_model("llama", num_hidden_layers=2)
    registry = get_registry()
    structure = registry.cls("adapter", "llama")().describe_model(model)
    granularities = {k: registry.cls("granularity", k)() for k in ("channel", "head")}
    layout = UnitLayout([g.units(structure) for g in granularities.values()])
    oracle = LossOracle(model, structure, layout, granularities)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    probs = torch.full((len(layout),), 0.6, dtype=torch.float64)
    policy = BernoulliPolicy(probs)
    batch = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    stats = _plain(lr=1e-2).step(_ctx(policy, oracle, batch=batch))
    assert stats.extra["grad_norm"] > 0
    assert (policy.probs != probs).sum() > 0.9 * len(layout)  # nearly every unit got a gradient
    for name, p in model.named_parameters():
        assert p.grad is None and not p.requires_grad, name
        assert torch.equal(p, weights[name]), name
    assert oracle.forward_passes == 2 and oracle.backward_passes == 2


# -- optimisation under a budget --------------------------------------------------------


def _importance_problem() -> tuple[torch.Tensor, list[Any]]:
    n = 12
    importance = torch.linspace(0.1, 1.2, n, dtype=torch.float64)[
        torch.randperm(n, generator=torch.Generator().manual_seed(3))]
    layout = UnitLayout([UnitSet("head", torch.arange(n) // 3, torch.arange(n) % 3,
                                 torch.ones(n, dtype=torch.int64))])
    return importance, Budget("per-type", layout, 0.5).constraints()


@pytest.mark.parametrize("straight_through", [False, True])
def test_finds_the_best_units_under_the_budget(straight_through: bool) -> None:
    """Loss 10 - importance.m + a small interaction: the default schedule keeps the six
    most important units, at the budget."""
    importance, constraints = _importance_problem()
    coupling = 0.05 * torch.ones(12, 12, dtype=torch.float64)
    oracle = QuadraticOracle(-importance, coupling, offset=10.0)
    policy = BernoulliPolicy(project(torch.full((12,), 0.5, dtype=torch.float64), constraints))
    estimator = GumbelEstimator(GumbelEstimator.Config(straight_through=straight_through))
    generator, steps = torch.Generator().manual_seed(0), 300
    start = oracle.expected_loss(policy.probs)
    for step in range(steps):
        estimator.step(_ctx(policy, oracle, step, steps, generator,
                            lambda z: project(z, constraints)))
    best = torch.zeros(12, dtype=torch.float64)
    best[importance.topk(6).indices] = 1.0
    optimum = oracle.expected_loss(best)
    assert oracle.expected_loss(policy.probs) - optimum < 0.25 * (start - optimum)
    assert policy.probs.sum() <= 6.0 + 1e-9
    assert oracle.backward_passes == 2 * steps


# -- checkpoints, errors, configuration -------------------------------------------------


def test_resumed_run_continues_bit_identically() -> None:
    importance, constraints = _importance_problem()
    oracle = QuadraticOracle(-importance)

    def run(estimator: GumbelEstimator, policy: BernoulliPolicy, generator: torch.Generator,
            steps: range) -> list[torch.Tensor]:
        for step in steps:
            estimator.step(_ctx(policy, oracle, step, 6, generator, lambda z: project(z, constraints)))
        return [policy.probs]

    config = GumbelEstimator.Config(lr=5e-2, lr_reference_steps=6)
    estimator, policy = GumbelEstimator(config), BernoulliPolicy(torch.full((12,), 0.5))
    generator = torch.Generator().manual_seed(42)
    run(estimator, policy, generator, range(3))
    saved = (estimator.state_dict(), policy.state_dict(), generator.get_state())
    uninterrupted = run(estimator, policy, generator, range(3, 6))
    resumed_estimator, resumed_policy = GumbelEstimator(config), BernoulliPolicy(torch.full((12,), 0.3))
    resumed_estimator.load_state_dict(saved[0])
    resumed_policy.load_state_dict(saved[1])
    resumed_generator = torch.Generator()
    resumed_generator.set_state(saved[2])
    assert torch.equal(run(resumed_estimator, resumed_policy, resumed_generator, range(3, 6))[0],
                       uninterrupted[0])


class _NanOracle(QuadraticOracle):
    def loss(self, batch: torch.Tensor, soft_masks: torch.Tensor) -> torch.Tensor:
        return super().loss(batch, soft_masks) * float("nan")


def test_non_finite_loss_skips_the_step() -> None:
    policy = BernoulliPolicy(S0.clone())
    estimator = _plain()
    oracle = _NanOracle(torch.ones(6))
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        stats = estimator.step(_ctx(policy, oracle))
    assert stats.skipped and torch.equal(policy.probs, S0)
    assert oracle.backward_passes == 0 and estimator.state_dict() == {"skipped": 1}


def test_config_defaults_validation_and_registration() -> None:
    config = GumbelEstimator.Config()
    assert (config.n_samples, config.tau_start, config.tau_end, config.tau_schedule,
            config.straight_through, config.lr, config.schedule) == (
        2, 1.0, 0.1, "exponential", False, 2e-2, "cosine")
    with pytest.raises(ValidationError, match="tau_end"):
        GumbelEstimator.Config(tau_start=0.5, tau_end=1.0)
    with pytest.raises(ValidationError):
        GumbelEstimator.Config(tau_end=0.0)
    spec = get_registry().get("estimator", "gumbel")
    assert spec.cls is GumbelEstimator and spec.origin.distribution == "pgprune-gumbel"
