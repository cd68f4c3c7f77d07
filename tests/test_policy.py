"""BernoulliPolicy: invariants of the probabilities, seeded sampling, score and log-prob."""

from __future__ import annotations

import math

import pytest
import torch

from pgprune_core.optim.policy import BernoulliPolicy


def _policy() -> BernoulliPolicy:
    probs = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97, 0.6], dtype=torch.float64)
    fixed = torch.tensor([False, False, False, False, False, True])
    return BernoulliPolicy(probs, fixed)


def test_setter_clamps_free_units_and_pins_fixed_ones() -> None:
    policy = BernoulliPolicy(torch.zeros(4), torch.tensor([False, False, True, False]), eps=1e-3)
    policy.probs = torch.tensor([-0.5, 0.0, 0.2, 1.0])
    assert policy.probs.dtype == torch.float64
    assert policy.probs.tolist() == [1e-3, 1e-3, 1.0, 1.0 - 1e-3]
    with pytest.raises(ValueError):
        policy.probs = torch.tensor([float("nan"), 0.5, 0.5, 0.5])
    with pytest.raises(ValueError):
        policy.probs = torch.zeros(3)


def test_probs_is_a_copy() -> None:
    policy = _policy()
    policy.probs[0] = 0.9
    assert float(policy.probs[0]) == 0.05


def test_sampling_frequencies_match_probabilities() -> None:
    """Each frequency lies within 4 standard errors sqrt(s(1-s)/N) of its probability."""
    policy, n = _policy(), 20000
    masks = policy.sample(n, torch.Generator().manual_seed(0))
    assert masks.shape == (n, 6) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    s = policy.probs
    freq = masks.double().mean(0)
    free = ~policy.fixed
    se = (s * (1 - s) / n).sqrt()
    assert torch.all((freq[free] - s[free]).abs() <= 4 * se[free])
    assert torch.all(masks[:, 5] == 1.0)  # fixed unit


def test_sampling_depends_on_the_generator_only() -> None:
    policy = _policy()
    first = policy.sample(8, torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    second = policy.sample(8, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert not torch.equal(first, policy.sample(8, torch.Generator().manual_seed(4)))


def test_exact_score_is_the_gradient_of_log_prob() -> None:
    policy = _policy()
    masks = policy.sample(16, torch.Generator().manual_seed(1))
    score = policy.score(masks)
    for i in range(masks.shape[0]):
        probs = policy.probs.requires_grad_(True)
        (grad,) = torch.autograd.grad(policy.log_prob(masks[i : i + 1], probs=probs).sum(), probs)
        torch.testing.assert_close(score[i], grad, rtol=1e-12, atol=1e-12)
    assert torch.all(score[:, 5] == 0.0)


def test_sqrt_score_rescales_the_exact_one() -> None:
    policy = _policy()
    masks = policy.sample(16, torch.Generator().manual_seed(2))
    s = policy.probs
    free = ~policy.fixed
    expected = policy.score(masks, "exact") * (s * (1 - s)).sqrt()
    torch.testing.assert_close(policy.score(masks, "sqrt")[:, free], expected[:, free])
    assert torch.all(policy.score(masks, "sqrt")[:, ~free] == 0.0)
    with pytest.raises(ValueError):
        policy.score(masks, "other")  # type: ignore[arg-type]


def test_natural_score_is_the_exact_one_times_the_bernoulli_variance() -> None:
    policy = _policy()
    masks = policy.sample(16, torch.Generator().manual_seed(3))
    s = policy.probs
    free = ~policy.fixed
    natural = policy.score(masks, "natural")
    expected = policy.score(masks, "exact") * s * (1 - s)
    torch.testing.assert_close(natural[:, free], expected[:, free], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(natural[:, free], (masks.double() - s)[:, free])
    assert torch.all(natural[:, ~free] == 0.0)
    assert natural.abs().max() <= 1.0  # bounded, where the exact score reaches 1/eps


def test_log_prob_by_hand() -> None:
    policy = _policy()
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0]])
    expected = math.log(0.05) + math.log(0.7) + math.log(0.5) + math.log(0.2) + math.log(0.97)
    assert float(policy.log_prob(mask)) == pytest.approx(expected, rel=1e-12)
    impossible = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])  # fixed unit pruned
    assert float(policy.log_prob(impossible)) == float("-inf")


def test_expected_kept_counts_units() -> None:
    policy = _policy()
    assert policy.expected_kept() == pytest.approx(0.05 + 0.3 + 0.5 + 0.8 + 0.97 + 1.0)


def test_state_dict_round_trip_is_exact() -> None:
    policy = _policy()
    policy.probs = policy.probs + 1e-3 / 3
    state = policy.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = BernoulliPolicy(torch.full((6,), 0.5))
    other.load_state_dict(state)
    assert torch.equal(other.probs, policy.probs)
    assert torch.equal(other.fixed, policy.fixed)
    assert other.eps == policy.eps
    with pytest.raises(ValueError):
        BernoulliPolicy(torch.full((5,), 0.5)).load_state_dict(state)
