"""Streaming moments in float32 about a shift: as precise as float64 sums where the mean dwarfs the spread."""

from __future__ import annotations

import numpy as np

from compressor.statistics import Moments


def _rows(rng: np.random.Generator, count: int, dim: int, mean: float, spread: float) -> np.ndarray:
    return (mean + spread * rng.standard_normal((count, dim))).astype(np.float32)


def test_float32_products_give_float64_covariances_of_rows_far_from_zero():
    rng = np.random.default_rng(0)
    x, y = _rows(rng, 6000, 12, 50.0, 0.01), _rows(rng, 6000, 3, -7.0, 1.0)
    first, second = (Moments(12, 3, track_partner=True, precision=np.float32) for _ in range(2))
    for start in range(0, 3000, 128):
        first.add(x[start : min(start + 128, 3000)], y[start : min(start + 128, 3000)])
    for start in range(3000, 6000, 128):
        second.add(x[start : start + 128] + 1, y[start : start + 128])  # another mean: another shift
    both = first.merged(second)
    assert both.centred_gram.dtype == np.float32 and both.count == 6000
    xs = np.vstack([x[:3000], x[3000:] + 1]).astype(np.float64)
    joint = np.cov(np.hstack([xs, y]).T, bias=True)
    assert np.allclose(both.covariance(), joint[:12, :12], rtol=1e-4, atol=1e-9)
    assert np.allclose(both.cross_covariance(), joint[:12, 12:], rtol=1e-4, atol=1e-7)
    assert np.allclose(both.partner_covariance(), joint[12:, 12:], rtol=1e-4)
    assert np.allclose(both.gram, xs.T @ xs, rtol=1e-7)
    assert np.allclose(both.cross, xs.T @ y, rtol=1e-6)
    assert np.allclose(both.second_moment_diag(), (xs**2).mean(axis=0), rtol=1e-7)


def test_memory_is_flat_in_the_number_of_rows():
    moments = Moments(64, 8, precision=np.float32)
    sizes = []
    for _ in range(3):
        moments.add(np.ones((1000, 64), np.float32), np.ones((1000, 8), np.float32))
        sizes.append(sum(a.nbytes for a in vars(moments).values() if isinstance(a, np.ndarray)))
    assert sizes[0] == sizes[-1] and moments.count == 3000
