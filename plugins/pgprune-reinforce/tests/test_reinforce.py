"""The ``reinforce`` estimator on synthetic objectives whose expected loss is known exactly.

The objective is ``L(m) = a.m + m^T B m`` on n = 6 units.  With independent
``m_i ~ Bernoulli(s_i)``, ``E[m_i] = E[m_i^2] = s_i`` and ``E[m_i m_j] = s_i s_j`` (i != j),
so ``E[L] = a.s + s^T B s - diag(B).s^2 + diag(B).s`` and
``dE[L]/ds = a + (B + B^T) s - 2 diag(B) s + diag(B)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from pgprune_reinforce import ReinforceEstimator
from pydantic import ValidationError

from pgprune_core.errors import ConfigError
from pgprune_core.model.structure import UnitLayout, UnitSet
from pgprune_core.optim.budget import Budget
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.optim.projection import project
from pgprune_core.optim.schedules import learning_rate, steps_scaled_lr
from pgprune_core.plugin.registry import get_registry
from pgprune_core.testing import fixed_step_estimator, step_context

S0 = torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8, 0.9], dtype=torch.float64)


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    a = torch.randn(6, generator=g, dtype=torch.float64)
    b = torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.5
    return a + 3.0, b  # an offset so that the raw losses are far from 0 (baselines matter)


def expected_loss(s: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    d = b.diagonal()
    return float(a @ s + s @ b @ s - d @ s**2 + d @ s)


def true_gradient(s: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = b.diagonal()
    return a + (b + b.T) @ s - 2 * d * s + d


class QuadraticOracle:
    """Stands in for ``pgprune_core.model.masking.LossOracle``: ``losses(batch, masks) -> [N]``."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b
        self.calls = 0
        self.rows = 0
        self.last_masks = torch.empty(0)
        self.last_losses = torch.empty(0)

    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        m = masks.double()
        self.calls += 1
        self.rows += m.shape[0]
        self.last_masks = masks
        self.last_losses = m @ self.a + ((m @ self.b) * m).sum(-1)
        return self.last_losses


class ScriptedOracle:
    """Returns the given loss vectors in turn, whatever the masks."""

    def __init__(self, script: Sequence[Sequence[float]]) -> None:
        self.script = list(script)
        self.masks: list[torch.Tensor] = []

    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        self.masks.append(masks)
        return torch.tensor(self.script[len(self.masks) - 1], dtype=torch.float32)


_ctx = step_context


def _plain(**options: Any) -> ReinforceEstimator:
    """A fixed step size: constant schedule, no length scaling."""
    return fixed_step_estimator(ReinforceEstimator, **options)


# -- unbiasedness -----------------------------------------------------------------------

N_MC = 200_000


def _assert_within_4_se(terms: torch.Tensor, estimate: torch.Tensor, truth: torch.Tensor) -> None:
    """The estimate is a mean of N_MC i.i.d. per-sample terms, so by the CLT each coordinate
    is normal around its expectation with standard error std/sqrt(N).  Four standard errors
    fail a correct estimator with probability 6e-5 per coordinate (4e-4 for all six; the
    seed is fixed, so the test is deterministic), while the gradient's entries (1.2 to 5.4
    here) are more than 10 standard errors (SE < 0.1), so a wrong sign, a missing term or a
    factor off by 2 cannot hide."""
    se = terms.std(0) / terms.shape[0] ** 0.5
    assert torch.all(se < 0.1)  # the test has power
    assert torch.all((estimate - truth).abs() <= 4 * se), (estimate, truth, se)


@pytest.mark.parametrize("baseline", ["none", "leave-one-out"])
def test_step_gradient_is_unbiased(baseline: str) -> None:
    """End to end through ``step``: with the identity projection and a tiny lr, the update
    is ``-lr * g`` exactly enough (float64) to read the gradient back."""
    a, b = _problem()
    oracle = QuadraticOracle(a, b)
    policy = BernoulliPolicy(S0.clone())
    lr = 1e-6
    estimator = _plain(n_samples=N_MC, lr=lr, baseline=baseline)
    estimator.step(_ctx(policy, oracle))
    grad = (S0 - policy.probs) / lr
    scores = BernoulliPolicy(S0).score(oracle.last_masks)
    losses = oracle.last_losses
    advantages = losses - losses.mean() if baseline == "leave-one-out" else losses
    _assert_within_4_se(advantages[:, None] * scores, grad, true_gradient(S0, a, b))


def test_constant_baseline_keeps_the_gradient_unbiased() -> None:
    a, b = _problem()
    policy = BernoulliPolicy(S0.clone())
    masks = policy.sample(N_MC, torch.Generator().manual_seed(11))
    advantages = QuadraticOracle(a, b).losses(torch.zeros(1), masks) - 4.0
    estimator = _plain()
    grad = estimator.gradient(policy, masks, advantages)
    _assert_within_4_se(advantages[:, None] * policy.score(masks), grad, true_gradient(S0, a, b))


def test_sqrt_score_is_the_exact_one_rescaled() -> None:
    policy = BernoulliPolicy(S0.clone())
    masks = policy.sample(64, torch.Generator().manual_seed(5))
    advantages = torch.randn(64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    exact = _plain(score="exact").gradient(policy, masks, advantages)
    sqrt = _plain(score="sqrt").gradient(policy, masks, advantages)
    torch.testing.assert_close(sqrt, exact * (S0 * (1 - S0)).sqrt(), rtol=1e-12, atol=1e-12)


def test_natural_step_estimates_the_natural_gradient() -> None:
    """``score: natural`` averages ``L(m) (m - s)``: unbiased for ``s (1 - s) dE[L]/ds``,
    the gradient preconditioned by the inverse Fisher information of Bernoulli(s)."""
    a, b = _problem()
    policy = BernoulliPolicy(S0.clone())
    masks = policy.sample(N_MC, torch.Generator().manual_seed(12))
    losses = QuadraticOracle(a, b).losses(torch.zeros(1), masks)
    grad = _plain(score="natural").gradient(policy, masks, losses)
    terms = losses[:, None] * policy.score(masks, "natural")
    _assert_within_4_se(terms, grad, S0 * (1 - S0) * true_gradient(S0, a, b))


def test_rms_advantage_scale_by_hand() -> None:
    """``advantage_scale: rms`` divides the advantages by the running RMS (window W,
    started at the first step's mean square, updated before use)."""
    script = [[4.0, 2.0], [1.0, 1.0], [6.0, 2.0]]
    oracle = ScriptedOracle(script)
    policy = BernoulliPolicy(S0.clone())
    estimator = _plain(lr=1e-3, score="natural", advantage_scale="rms", scale_window=4)
    generator = torch.Generator().manual_seed(0)
    baseline, mean_square = None, None
    for step, losses in enumerate(script):
        before = policy.probs
        stats = estimator.step(_ctx(policy, oracle, step=step, generator=generator))
        values = torch.tensor(losses, dtype=torch.float64)
        baseline = float(values.mean()) if baseline is None else baseline
        baseline = 4 / 5 * baseline + float(values.sum()) / 10
        advantages = values - baseline
        square = float((advantages**2).mean())
        mean_square = square if mean_square is None else mean_square
        mean_square = 3 / 4 * mean_square + square / 4
        scaled = advantages / mean_square**0.5
        assert stats.baseline == pytest.approx(baseline, rel=1e-12)
        natural = BernoulliPolicy(before).score(oracle.masks[step], "natural")
        torch.testing.assert_close(policy.probs, before - 1e-3 * (scaled @ natural) / 2)
    assert estimator.state_dict()["advantage_rms2"] == [pytest.approx(mean_square, rel=1e-12)]


def test_unbiased_normalisation_divides_by_n_minus_one() -> None:
    policy = BernoulliPolicy(S0.clone())
    masks = policy.sample(2, torch.Generator().manual_seed(5))
    advantages = torch.tensor([0.3, -0.1], dtype=torch.float64)
    mean = _plain().gradient(policy, masks, advantages)
    unbiased = _plain(normalize="unbiased").gradient(policy, masks, advantages)
    torch.testing.assert_close(unbiased, 2 * mean)


# -- the baseline, NaN handling, checkpoints ---------------------------------------------


def test_moving_average_baseline_by_hand() -> None:
    """Eq. 8 with T = 5, N_s = 2, started at the first mean and updated before use."""
    script = [[4.0, 2.0], [1.0, 1.0], [6.0, 2.0]]
    oracle = ScriptedOracle(script)
    policy = BernoulliPolicy(S0.clone())
    estimator = _plain(lr=1e-3)
    expected = []
    delta = 3.0  # mean of the first step
    for losses in script:
        delta = 4 / 5 * delta + sum(losses) / (2 * 5)
        expected.append(delta)
    assert expected == pytest.approx([3.0, 2.6, 2.88])
    generator = torch.Generator().manual_seed(0)
    for step, losses in enumerate(script):
        before = policy.probs
        stats = estimator.step(_ctx(policy, oracle, step=step, generator=generator))
        assert stats.baseline == pytest.approx(expected[step], rel=1e-12)
        assert stats.loss == pytest.approx(sum(losses) / 2)
        advantages = torch.tensor(losses, dtype=torch.float64) - expected[step]
        scores = BernoulliPolicy(before).score(oracle.masks[step])
        torch.testing.assert_close(policy.probs, before - 1e-3 * (advantages @ scores) / 2)


def test_first_step_with_moving_average_has_zero_mean_advantage() -> None:
    estimator = _plain()
    advantages, baseline = estimator.advantages(torch.tensor([5.0, 7.0], dtype=torch.float64))
    assert baseline == pytest.approx(6.0, rel=1e-15)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 1.0], dtype=torch.float64))


def test_non_finite_loss_skips_the_step() -> None:
    oracle = ScriptedOracle([[2.0, 4.0], [float("nan"), 1.0], [1.0, float("inf")], [1.0, 5.0]])
    policy = BernoulliPolicy(S0.clone())
    estimator = _plain(lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    estimator.step(_ctx(policy, oracle, step=0, generator=generator))
    probs, state = policy.probs, estimator.state_dict()
    for step in (1, 2):
        with pytest.warns(RuntimeWarning, match="non-finite loss"):
            stats = estimator.step(_ctx(policy, oracle, step=step, generator=generator))
        assert stats.skipped
        assert stats.extra["skipped_total"] == step
        assert torch.equal(policy.probs, probs)
        assert estimator.state_dict()["baseline"] == state["baseline"]
    assert estimator.state_dict()["skipped"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = estimator.step(_ctx(policy, oracle, step=3, generator=generator))
    assert not stats.skipped and not torch.equal(policy.probs, probs)


@pytest.mark.parametrize("options", [{}, {"score": "natural", "advantage_scale": "rms"}],
                         ids=["paper", "natural-rms"])
def test_resumed_run_continues_bit_identically(tmp_path: Any, options: dict[str, Any]) -> None:
    a, b = _problem()
    layout = UnitLayout([UnitSet("channel", torch.zeros(6, dtype=torch.int64), torch.arange(6),
                                 torch.ones(6, dtype=torch.int64))])
    constraints = Budget("per-type", layout, 0.5).constraints()

    def run(estimator: ReinforceEstimator, policy: BernoulliPolicy,
            generator: torch.Generator, steps: range) -> list[Any]:
        out = []
        for step in steps:
            stats = estimator.step(_ctx(policy, QuadraticOracle(a, b), step, 6, generator,
                                        lambda z: project(z, constraints)))
            out.append((policy.probs, stats))
        return out

    config = ReinforceEstimator.Config(lr=5e-2, lr_reference_steps=6, **options)
    estimator, policy = ReinforceEstimator(config), BernoulliPolicy(S0.clone())
    generator = torch.Generator().manual_seed(42)
    estimator.start(policy, 6)
    run(estimator, policy, generator, range(3))
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"estimator": estimator.state_dict(), "policy": policy.state_dict(),
                "rng": generator.get_state()}, checkpoint)
    uninterrupted = run(estimator, policy, generator, range(3, 6))

    saved = torch.load(checkpoint, weights_only=True)
    resumed_estimator = ReinforceEstimator(config)
    resumed_policy = BernoulliPolicy(torch.full((6,), 0.5))
    resumed_estimator.start(resumed_policy, 6)
    resumed_estimator.load_state_dict(saved["estimator"])
    resumed_policy.load_state_dict(saved["policy"])
    resumed_generator = torch.Generator()
    resumed_generator.set_state(saved["rng"])
    resumed = run(resumed_estimator, resumed_policy, resumed_generator, range(3, 6))
    for (probs, stats), (probs2, stats2) in zip(uninterrupted, resumed, strict=True):
        assert torch.equal(probs, probs2)
        assert stats == stats2


# -- optimisation under a budget --------------------------------------------------------


def _importance_problem() -> tuple[UnitLayout, torch.Tensor, Budget]:
    n = 12
    importance = torch.linspace(0.1, 1.2, n, dtype=torch.float64)[
        torch.randperm(n, generator=torch.Generator().manual_seed(3))]
    layout = UnitLayout([UnitSet("head", torch.arange(n) // 3, torch.arange(n) % 3,
                                 torch.ones(n, dtype=torch.int64))])
    return layout, importance, Budget("per-type", layout, 0.5)


def _optimise(config: ReinforceEstimator.Config, steps: int) -> tuple[float, float, torch.Tensor, QuadraticOracle]:
    """Loss 10 - importance . m: pruning an important unit costs more."""
    _, importance, budget = _importance_problem()
    oracle = QuadraticOracle(-importance, torch.zeros(12, 12, dtype=torch.float64))
    constraints = budget.constraints()
    policy = BernoulliPolicy(project(torch.full((12,), 0.5, dtype=torch.float64), constraints))
    estimator = ReinforceEstimator(config)
    estimator.start(policy, steps)
    generator = torch.Generator().manual_seed(0)
    start = float(-importance @ policy.probs)
    for step in range(steps):
        estimator.step(_ctx(policy, oracle, step, steps, generator,
                            lambda z: project(z, constraints)))
    return start, float(-importance @ policy.probs), budget.final_mask(policy.probs), oracle


def test_default_estimator_finds_the_best_units_under_the_budget() -> None:
    """The defaults (lr 2e-3 for 15k steps, raised by the capped factor 15 to 3e-2) solve
    a 300-step problem."""
    steps = 300
    start, end, keep, oracle = _optimise(ReinforceEstimator.Config(), steps)
    _, importance, _ = _importance_problem()
    optimum = -float(importance.topk(6).values.sum())  # -5.7, from -3.9 at s = 1/2
    assert end - optimum < 0.25 * (start - optimum)
    assert set(keep.nonzero().flatten().tolist()) == set(importance.topk(6).indices.tolist())
    assert oracle.calls == steps and oracle.rows == 2 * steps


def test_unscaled_paper_lr_stays_far_from_the_optimum_in_a_short_run() -> None:
    """The problem the scaling rule solves (REFERENCE.md, proxy-llama-7m measurement):
    after 300 steps the paper's lr leaves several times the scaled run's gap."""
    _, importance, _ = _importance_problem()
    optimum = -float(importance.topk(6).values.sum())
    _, end, _, _ = _optimise(ReinforceEstimator.Config(scale_lr_to_steps=False), 300)
    _, scaled_end, _, _ = _optimise(ReinforceEstimator.Config(), 300)
    assert end - optimum > 3 * (scaled_end - optimum)


# -- the learning rate ------------------------------------------------------------------


def test_learning_rate_scaling_rule() -> None:
    estimator = ReinforceEstimator()  # lr 2e-3 for 15,000 steps, cosine
    assert estimator.effective_lr(0, 1500) == pytest.approx(2e-2)
    assert estimator.effective_lr(750, 1500) == pytest.approx(1e-2)
    assert estimator.effective_lr(0, 15000) == pytest.approx(2e-3)
    assert estimator.effective_lr(0, 60000) == pytest.approx(2e-3)  # never scaled down
    assert estimator.effective_lr(0, 30) == pytest.approx(3e-2)  # at most 15x
    uncapped = ReinforceEstimator(ReinforceEstimator.Config(lr_max_scale=1e9))
    assert uncapped.effective_lr(0, 30) == pytest.approx(1.0)
    fixed = ReinforceEstimator(ReinforceEstimator.Config(scale_lr_to_steps=False))
    assert fixed.effective_lr(0, 1500) == pytest.approx(2e-3)
    constant = ReinforceEstimator(ReinforceEstimator.Config(schedule="constant"))
    assert constant.effective_lr(1499, 1500) == pytest.approx(2e-2)


def test_step_reports_the_effective_lr() -> None:
    policy = BernoulliPolicy(S0.clone())
    stats = ReinforceEstimator().step(_ctx(policy, ScriptedOracle([[1.0, 2.0]]), 0, 1500))
    assert stats.extra["lr"] == pytest.approx(2e-2)
    assert set(stats.extra) == {"lr", "grad_norm", "skipped_total", "update_abs_mean"}


# -- configuration and registration -----------------------------------------------------


def test_config_defaults_and_validation() -> None:
    config = ReinforceEstimator.Config()
    assert (config.n_samples, config.window, config.lr, config.schedule, config.baseline,
            config.score, config.normalize) == (2, 5, 2e-3, "cosine", "moving-average",
                                                "exact", "mean")
    with pytest.raises(ValidationError, match="leave-one-out"):
        ReinforceEstimator.Config(n_samples=1, baseline="leave-one-out")
    with pytest.raises(ValidationError, match="n_samples"):
        ReinforceEstimator.Config(n_samples=1, normalize="unbiased")
    with pytest.raises(ValidationError):
        ReinforceEstimator.Config(lr=0.0)
    with pytest.raises(ValidationError):
        ReinforceEstimator.Config(surprise=1)  # type: ignore[call-arg]


def test_presets_set_their_options_and_explicit_options_win() -> None:
    paper = ReinforceEstimator.Config(preset="paper")
    assert (paper.lr, paper.scale_lr_to_steps, paper.schedule, paper.n_samples, paper.window,
            paper.baseline, paper.score, paper.normalize, paper.advantage_scale) == (
        2e-3, False, "cosine", 2, 5, "moving-average", "exact", "mean", "none")
    authors = ReinforceEstimator.Config(preset="authors")
    assert (authors.score, authors.normalize, authors.baseline) == ("sqrt", "unbiased",
                                                                   "moving-average")
    mixed = ReinforceEstimator.Config(preset="paper", lr=0.05, n_samples=4)
    assert (mixed.lr, mixed.n_samples, mixed.score) == (0.05, 4, "exact")
    # the default preset is the field defaults themselves
    assert ReinforceEstimator.Config(preset="pgprune") == ReinforceEstimator.Config()
    with pytest.raises(ValidationError, match="preset"):
        ReinforceEstimator.Config(preset="fastest")  # type: ignore[arg-type]


def test_paper_preset_through_the_configuration() -> None:
    from pgprune_core.config.resolve import resolve_config

    config = resolve_config(None, None, {"estimator.preset": "paper"})
    assert (config.estimator.preset, config.estimator.scale_lr_to_steps) == ("paper", False)
    again = resolve_config(None, None, {"estimator.preset": "paper", "estimator.score": "sqrt"})
    assert again.estimator.score == "sqrt" and again.estimator.scale_lr_to_steps is False


def test_registered_through_its_entry_point() -> None:
    spec = get_registry().get("estimator", "reinforce")
    assert spec.cls is ReinforceEstimator
    assert spec.origin.distribution == "pgprune-reinforce"


def test_schedule_shapes() -> None:
    assert learning_rate(1.0, 0, 10, "cosine") == 1.0
    assert learning_rate(1.0, 5, 10, "cosine") == pytest.approx(0.5)
    assert learning_rate(1.0, 10, 10, "cosine") == pytest.approx(0.0)
    assert learning_rate(1.0, 25, 10, "cosine") == pytest.approx(0.0)  # never rises again
    assert learning_rate(1.0, 7, 10, "constant") == 1.0
    with pytest.raises(ConfigError):
        learning_rate(1.0, 0, 10, "linear")  # type: ignore[arg-type]
    assert steps_scaled_lr(1.0, 0, 100) == 1.0
    assert steps_scaled_lr(1.0, 10, 100, max_scale=4.0) == 4.0
    with pytest.raises(ConfigError):
        steps_scaled_lr(1.0, 10, 100, max_scale=0.5)
