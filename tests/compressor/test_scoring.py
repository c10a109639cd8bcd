"""The Gaussian MI estimates against closed forms, and the elimination's preference for non-redundant units."""
from __future__ import annotations

import numpy as np

from compressor.scoring import _eliminate, _ridge, top_k, unit_mi


def test_unit_mi_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((200_000, 1))
    rho = np.array([0.0, 0.5, 0.9])
    x = rho * y + np.sqrt(1 - rho**2) * rng.standard_normal((200_000, 3))
    cov = np.cov(np.hstack([x, y]).T)
    mi = unit_mi(np.diag(cov)[:3], cov[:3, 3:], cov[3:, 3:])
    np.testing.assert_allclose(mi, -0.5 * np.log(1 - rho**2), atol=0.01)


def test_elimination_drops_a_duplicate_before_a_weaker_unique_unit():
    """u0 and u1 carry the same signal; u2 a weaker, different one. Keeping two of three must keep u2: each
    duplicate alone carries more (1.25 nats against 0.51), but losing one costs only 0.32 while the other stays."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 50_000))
    units = np.stack([a + 0.3 * rng.standard_normal(50_000), a + 0.3 * rng.standard_normal(50_000),
                      0.8 * b + 0.6 * rng.standard_normal(50_000)], axis=1)
    targets = np.stack([a, b], axis=1)
    cov = np.cov(np.hstack([units, targets]).T)
    marginal = _ridge(cov[:3, :3])
    conditional = marginal - cov[:3, 3:] @ np.linalg.solve(_ridge(cov[3:, 3:]), cov[3:, :3])
    alive = _eliminate(marginal, conditional, [np.array([i]) for i in range(3)], np.zeros(3, dtype=int), [2])
    assert alive[2] and alive.sum() == 2
    marginal_choice = top_k(unit_mi(np.diag(cov)[:3], cov[:3, 3:], cov[3:, 3:]), 2)
    assert not marginal_choice[2]  # what per-unit MI alone would have kept: both duplicates


def test_heads_are_removed_as_blocks():
    rng = np.random.default_rng(2)
    signal = rng.standard_normal((20_000, 2))
    head0 = signal[:, :1] + 0.1 * rng.standard_normal((20_000, 2))  # informative head of width 2
    head1 = rng.standard_normal((20_000, 2))  # noise head
    cov = np.cov(np.hstack([head0, head1, signal]).T)
    marginal = _ridge(cov[:4, :4])
    conditional = marginal - cov[:4, 4:] @ np.linalg.solve(_ridge(cov[4:, 4:]), cov[4:, :4])
    alive = _eliminate(marginal, conditional, [np.arange(2), np.arange(2, 4)], np.zeros(2, dtype=int), [1])
    assert alive.tolist() == [True, False]
