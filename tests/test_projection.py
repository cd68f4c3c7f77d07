"""The bisection projection (paper App. A.1) against an exact breakpoint solver and the
optimality conditions of a Euclidean projection onto a convex set."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgprune_core.interfaces import Constraint
from pgprune_core.optim.projection import BisectionProjector, project, project_one

TOL = 1e-9


def exact_projection(z: np.ndarray, c: np.ndarray, capacity: float) -> np.ndarray:
    """Projection onto {c^T x <= K, 0 <= x <= 1} by the breakpoint method, independent of
    bisection: x(v) = clip(z - v c, 0, 1) is linear in v between the breakpoints
    (z_i - 1)/c_i and z_i/c_i, so on the segment where g(v) = c^T x(v) crosses K the root
    is solved in closed form from the active set."""
    x0 = np.clip(z, 0.0, 1.0)
    if c @ x0 <= capacity:
        return x0
    points = np.unique(np.concatenate([[0.0], (z - 1.0) / c, z / c]))
    points = points[points >= 0.0]

    def g(v: float) -> float:
        return float(c @ np.clip(z - v * c, 0.0, 1.0))

    for left, right in itertools.pairwise(points):
        if g(left) >= capacity >= g(right):
            mid = 0.5 * (left + right)
            upper = (z - mid * c) >= 1.0  # saturated at 1 on this segment
            active = ((z - mid * c) > 0.0) & ~upper
            if not active.any():  # flat segment: g is constant = capacity
                return np.clip(z - left * c, 0.0, 1.0)
            v = (c[upper].sum() + c[active] @ z[active] - capacity) / (c[active] @ c[active])
            return np.clip(z - v * c, 0.0, 1.0)
    return np.zeros_like(z)  # capacity 0: only the origin is feasible


def random_feasible(rng: np.random.Generator, c: np.ndarray, capacity: float, k: int) -> np.ndarray:
    """Points of the feasible set: uniform box points scaled into the half-space, plus
    0/1 vertices that fit."""
    y = rng.uniform(0.0, 1.0, size=(k, c.size))
    load = y @ c
    y = np.where((load > capacity)[:, None], y * (capacity / np.maximum(load, 1e-300))[:, None], y)
    vertices = rng.integers(0, 2, size=(k, c.size)).astype(float)
    vertices = vertices[vertices @ c <= capacity]
    return np.concatenate([y, vertices, np.zeros((1, c.size))])


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float]:
    n = draw(st.integers(1, 12))
    z = np.array(draw(st.lists(st.floats(-2.0, 3.0), min_size=n, max_size=n)))
    if draw(st.booleans()):
        c = np.ones(n)
    else:
        c = np.array(draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n)))
    capacity = draw(st.floats(0.0, 1.2)) * float(c.sum())
    return z, c, capacity


@settings(max_examples=300, deadline=None)
@given(problems())
def test_matches_exact_breakpoint_solver(problem: tuple[np.ndarray, np.ndarray, float]) -> None:
    z, c, capacity = problem
    got = project_one(torch.from_numpy(z), torch.from_numpy(c), capacity).numpy()
    np.testing.assert_allclose(got, exact_projection(z, c, capacity), atol=1e-8)
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert c @ got <= capacity + TOL


@settings(max_examples=150, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1))
def test_optimality_against_feasible_points(
    problem: tuple[np.ndarray, np.ndarray, float], seed: int
) -> None:
    """x is the projection iff (z - x) . (y - x) <= 0 for every feasible y; in particular
    no feasible y is closer to z."""
    z, c, capacity = problem
    x = project_one(torch.from_numpy(z), torch.from_numpy(c), capacity).numpy()
    ys = random_feasible(np.random.default_rng(seed), c, capacity, 64)
    assert np.all((ys - x) @ (z - x) <= 1e-7)
    assert np.all(np.linalg.norm(ys - z, axis=1) >= np.linalg.norm(x - z) - 1e-9)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_kkt_conditions(problem: tuple[np.ndarray, np.ndarray, float]) -> None:
    """x = clip(z - v c) for one multiplier v >= 0, with v > 0 only at an active budget."""
    z, c, capacity = problem
    x = project_one(torch.from_numpy(z), torch.from_numpy(c), capacity).numpy()
    interior = (x > 1e-7) & (x < 1.0 - 1e-7)
    if interior.any():
        v = (z[interior] - x[interior]) / c[interior]
        assert np.ptp(v) <= 1e-6  # one multiplier for every interior coordinate
        assert v[0] >= -1e-9
        if v[0] > 1e-7:
            assert abs(c @ x - capacity) <= 1e-7  # complementary slackness
        np.testing.assert_allclose(x, np.clip(z - v[0] * c, 0.0, 1.0), atol=1e-6)


# -- edge cases -------------------------------------------------------------------------


def test_already_feasible_is_returned_unchanged() -> None:
    z = torch.tensor([0.1, 0.5, 0.2], dtype=torch.float64)
    assert torch.equal(project_one(z, torch.ones(3, dtype=torch.float64), 1.0), z)


def test_ties_stay_tied() -> None:
    z = torch.tensor([0.9, 0.9, 0.9, 0.4], dtype=torch.float64)
    x = project_one(z, torch.ones(4, dtype=torch.float64), 2.0)
    assert x[0] == x[1] == x[2]
    assert float(x.sum()) == pytest.approx(2.0, abs=TOL)
    np.testing.assert_allclose(x.numpy(), exact_projection(z.numpy(), np.ones(4), 2.0), atol=1e-12)


def test_zero_capacity_gives_zeros() -> None:
    z = torch.tensor([0.3, 2.0, -1.0], dtype=torch.float64)
    x = project_one(z, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 0.0)
    assert torch.equal(x, torch.zeros(3, dtype=torch.float64))


def test_full_capacity_only_clips() -> None:
    z = torch.tensor([1.7, -0.3, 0.4], dtype=torch.float64)
    c = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    x = project_one(z, c, float(c.sum()))
    assert torch.equal(x, torch.tensor([1.0, 0.0, 0.4], dtype=torch.float64))


def test_entries_outside_the_box() -> None:
    z = torch.tensor([5.0, -5.0, 1.5, 0.5], dtype=torch.float64)
    x = project_one(z, torch.ones(4, dtype=torch.float64), 1.5)
    np.testing.assert_allclose(x.numpy(), exact_projection(z.numpy(), np.ones(4), 1.5), atol=1e-12)
    assert x[1] == 0.0 and x[0] == 1.0


def test_several_disjoint_constraints_and_uncovered_entries() -> None:
    rng = np.random.default_rng(0)
    z = rng.uniform(-0.5, 1.5, size=10)
    groups = [np.array([0, 3, 5]), np.array([1, 2, 8, 9])]  # 4, 6, 7 are in no constraint
    weights = [np.array([1.0, 2.0, 3.0]), np.ones(4)]
    capacities = [1.5, 1.0]
    constraints = [
        Constraint(torch.from_numpy(i), torch.from_numpy(w), k)
        for i, w, k in zip(groups, weights, capacities, strict=True)
    ]
    got = BisectionProjector().project(torch.from_numpy(z), constraints).numpy()
    expected = np.clip(z, 0.0, 1.0)
    for i, w, k in zip(groups, weights, capacities, strict=True):
        expected[i] = exact_projection(z[i], w, k)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_keeps_the_input_dtype() -> None:
    z = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float32)
    c = Constraint(torch.arange(3), torch.ones(3, dtype=torch.float64), 1.0)
    x = project(z, [c])
    assert x.dtype == torch.float32
    assert float(x.sum()) == pytest.approx(1.0, abs=1e-6)
