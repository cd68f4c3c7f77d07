"""The ``ppo`` estimator: the clipped surrogate against hand computations, the K epochs,
normalised advantages, forward-only cost, optimisation under a budget, checkpoints."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pgprune_ppo import ClippedSurrogate, PpoEstimator
from pydantic import ValidationError

from pgprune_core.model.structure import UnitLayout, UnitSet
from pgprune_core.optim.budget import Budget
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.optim.projection import project
from pgprune_core.plugin.registry import get_registry
from pgprune_core.testing import fixed_step_estimator, step_context
from pgprune_core.testing.oracles import QuadraticOracle, ScriptedOracle

_ctx = step_context


def _plain(**options: Any) -> PpoEstimator:
    """A fixed step size: constant schedule, no length scaling."""
    return fixed_step_estimator(PpoEstimator, **options)


# -- the clipped surrogate --------------------------------------------------------------

#: one mask, six units, eps = 0.2, s_old = 0.5 everywhere; each unit is placed at a ratio
#: inside or outside the range, for a positive (mask 0) and a negative (mask 1) advantage
MASKS = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 1, 0, 1, 1, 1]], dtype=torch.float64)
S = torch.tensor([0.65, 0.55, 0.3, 0.35, 0.35, 0.65], dtype=torch.float64)
#                 r=1.3  r=1.1 r=1.4 r=0.7  r=0.7  r=1.3


def test_clipping_against_a_hand_computation() -> None:
    """dr/ds = (2m - 1) / p_old = +-2 here.  A term is switched off exactly when its ratio
    has left [0.8, 1.2] in the direction its advantage pushes: r > 1.2 with A > 0, or
    r < 0.8 with A < 0.  Otherwise it contributes A * dr/ds, averaged over masks."""
    old = torch.full((6,), 0.5, dtype=torch.float64)
    surrogate = ClippedSurrogate(MASKS, torch.tensor([1.5, -0.5], dtype=torch.float64), old, 0.2)
    torch.testing.assert_close(surrogate.ratios(S)[0],
                               torch.tensor([1.3, 1.1, 1.4, 0.7, 0.7, 1.3], dtype=torch.float64))
    # mask 0 (A = +1.5): units 0, 5 (r 1.3, m 1) and 2 (r 1.4, m 0) are clipped; units 3
    # and 4 (r 0.7 < 0.8 but A > 0) still pull s back up
    # mask 1 (A = -0.5): units 3 and 4 (r 0.7) are clipped; units 0 and 5 (r 1.3 > 1.2 but
    # A < 0) still push s down
    expected_clipped = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(surrogate.clipped(S), expected_clipped)
    mask0 = 1.5 * torch.tensor([0.0, 2.0, 0.0, 2.0, 2.0, 0.0], dtype=torch.float64)
    mask1 = -0.5 * torch.tensor([2.0, 2.0, -2.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    expected = (mask0 + mask1) / 2
    torch.testing.assert_close(surrogate.gradient(S), expected)
    # the closed form is the derivative of the surrogate's value
    s = S.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(surrogate.value(s), s)
    torch.testing.assert_close(autograd, expected)


def test_at_the_old_probabilities_the_gradient_is_the_reinforce_direction() -> None:
    policy = BernoulliPolicy(torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64))
    masks = policy.sample(5, torch.Generator().manual_seed(3)).double()
    advantages = torch.tensor([0.3, -1.2, 0.8, 0.1, -0.4], dtype=torch.float64)
    surrogate = ClippedSurrogate(masks, advantages, policy.probs, 0.2)
    torch.testing.assert_close(surrogate.gradient(policy.probs),
                               advantages @ policy.score(masks) / 5)
    assert not surrogate.clipped(policy.probs).any()


def _two_mask_step(epochs: int, clip: float) -> torch.Tensor:
    """s_old = 0.5; masks [1,1,0,0] and [1,0,1,0]; losses [1, 2] with the leave-one-out
    baseline give advantages [-1, +1] -> normalised rewards [+1/sqrt2, -1/sqrt2].  The first
    update moves unit 1 up and unit 2 down by 0.15 each (gradient sqrt2, lr 0.15/sqrt2)."""
    oracle = ScriptedOracle([[1.0, 2.0]])
    policy = BernoulliPolicy(torch.full((4,), 0.5, dtype=torch.float64))
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.float32)
    estimator = _plain(lr=0.15 / 2**0.5, epochs=epochs, clip=clip, baseline="leave-one-out",
                       n_samples=2)
    policy.sample = lambda n, generator: masks  # type: ignore[method-assign]
    estimator.step(_ctx(policy, oracle))
    assert len(oracle.masks) == 1 and oracle.backward_passes == 0  # one forward, no backward
    return policy.probs


def test_clipped_units_stop_moving_after_leaving_the_range() -> None:
    one = _two_mask_step(epochs=1, clip=0.2)
    torch.testing.assert_close(one, torch.tensor([0.5, 0.65, 0.35, 0.5], dtype=torch.float64))
    # after the first update both ratios of units 1 and 2 are outside [0.8, 1.2] in the
    # pushed direction (0.65 / 0.5 = 1.3 and 0.35 / 0.5 = 0.7): later epochs add nothing
    torch.testing.assert_close(_two_mask_step(epochs=4, clip=0.2), one)
    # a wide range lets the same samples push four times as far
    torch.testing.assert_close(_two_mask_step(epochs=4, clip=0.9),
                               torch.tensor([0.5, 1.0 - 1e-4, 1e-4, 0.5], dtype=torch.float64))


def test_advantages_are_normalised_rewards() -> None:
    rewards = PpoEstimator.normalised_rewards(torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64))
    expected = -torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64) / torch.tensor([0.2, -0.1, 0.5]).double().std()
    torch.testing.assert_close(rewards, expected)
    assert torch.equal(PpoEstimator.normalised_rewards(torch.full((3,), 0.7, dtype=torch.float64)),
                       torch.zeros(3, dtype=torch.float64))


def test_equal_losses_leave_the_policy_unchanged() -> None:
    policy = BernoulliPolicy(torch.full((4,), 0.5, dtype=torch.float64))
    stats = _plain(lr=1.0).step(_ctx(policy, ScriptedOracle([[2.0, 2.0, 2.0, 2.0]])))
    assert torch.equal(policy.probs, torch.full((4,), 0.5, dtype=torch.float64))
    assert stats.extra["update_abs_mean"] == 0.0


def test_moving_average_baseline_is_shared_with_reinforce() -> None:
    estimator = _plain()
    script = [[4.0, 2.0, 3.0, 3.0], [1.0, 1.0, 2.0, 0.0]]
    oracle = ScriptedOracle(script)
    policy = BernoulliPolicy(torch.full((4,), 0.5, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    first = estimator.step(_ctx(policy, oracle, 0, generator=generator))
    second = estimator.step(_ctx(policy, oracle, 1, generator=generator))
    assert first.baseline == pytest.approx(3.0)
    assert second.baseline == pytest.approx(4 / 5 * 3.0 + 4.0 / (4 * 5))


# -- optimisation under a budget --------------------------------------------------------


def test_finds_the_best_units_under_the_budget() -> None:
    n = 12
    importance = torch.linspace(0.1, 1.2, n, dtype=torch.float64)[
        torch.randperm(n, generator=torch.Generator().manual_seed(3))]
    layout = UnitLayout([UnitSet("head", torch.arange(n) // 3, torch.arange(n) % 3,
                                 torch.ones(n, dtype=torch.int64))])
    budget = Budget("per-type", layout, 0.5)
    constraints = budget.constraints()
    oracle = QuadraticOracle(-importance, offset=10.0)
    policy = BernoulliPolicy(project(torch.full((n,), 0.5, dtype=torch.float64), constraints))
    estimator = PpoEstimator(PpoEstimator.Config(lr=1e-2, scale_lr_to_steps=False))
    generator, steps = torch.Generator().manual_seed(0), 150
    start = oracle.expected_loss(policy.probs)
    for step in range(steps):
        estimator.step(_ctx(policy, oracle, step, steps, generator,
                            lambda z: project(z, constraints)))
    optimum = -float(importance.topk(6).values.sum()) + 10.0
    assert oracle.expected_loss(policy.probs) - optimum < 0.25 * (start - optimum)
    keep = budget.final_mask(policy.probs)
    assert set(keep.nonzero().flatten().tolist()) == set(importance.topk(6).indices.tolist())
    assert oracle.forward_passes == 4 * steps and oracle.backward_passes == 0


# -- checkpoints, errors, configuration -------------------------------------------------


def test_resumed_run_continues_bit_identically() -> None:
    oracle = QuadraticOracle(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64), offset=3.0)

    def run(estimator: PpoEstimator, policy: BernoulliPolicy, generator: torch.Generator,
            steps: range) -> list[Any]:
        return [(estimator.step(_ctx(policy, oracle, step, 6, generator)), policy.probs)
                for step in steps]

    config = PpoEstimator.Config(lr=1e-2)
    estimator, policy = PpoEstimator(config), BernoulliPolicy(torch.full((6,), 0.5))
    generator = torch.Generator().manual_seed(42)
    run(estimator, policy, generator, range(3))
    saved = (estimator.state_dict(), policy.state_dict(), generator.get_state())
    uninterrupted = run(estimator, policy, generator, range(3, 6))
    resumed_estimator, resumed_policy = PpoEstimator(config), BernoulliPolicy(torch.full((6,), 0.3))
    resumed_estimator.load_state_dict(saved[0])
    resumed_policy.load_state_dict(saved[1])
    resumed_generator = torch.Generator()
    resumed_generator.set_state(saved[2])
    resumed = run(resumed_estimator, resumed_policy, resumed_generator, range(3, 6))
    for (stats, probs), (stats2, probs2) in zip(uninterrupted, resumed, strict=True):
        assert stats == stats2 and torch.equal(probs, probs2)


def test_non_finite_loss_skips_the_step() -> None:
    policy = BernoulliPolicy(torch.full((4,), 0.5, dtype=torch.float64))
    estimator = _plain()
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        stats = estimator.step(_ctx(policy, ScriptedOracle([[1.0, float("nan"), 2.0, 3.0]])))
    assert stats.skipped and estimator.state_dict() == {"baseline": [], "skipped": 1}


def test_config_defaults_validation_and_registration() -> None:
    config = PpoEstimator.Config()
    assert (config.n_samples, config.epochs, config.clip, config.lr, config.baseline,
            config.schedule) == (4, 4, 0.2, 3e-5, "moving-average", "cosine")
    for bad in ({"n_samples": 1}, {"clip": 1.0}, {"clip": 0.0}, {"epochs": 0}):
        with pytest.raises(ValidationError):
            PpoEstimator.Config(**bad)
    spec = get_registry().get("estimator", "ppo")
    assert spec.cls is PpoEstimator and spec.origin.distribution == "pgprune-ppo"
