"""Streaming moments in float32 about a shift: as precise as float64 sums where the mean dwarfs the spread."""

from __future__ import annotations

import numpy as np
import pytest

from compressor import statistics
from compressor.statistics import Gathered, Moments


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


def test_moments_mapped_through_a_projection_equal_those_of_its_outputs():
    """x against y = z W + b, derived from x against z with z zᵀ tracked, equals x against y accumulated directly."""
    rng = np.random.default_rng(9)
    x, z = rng.standard_normal((300, 4)) + 3.0, rng.standard_normal((300, 6)) - 1.0
    weights, bias = rng.standard_normal((6, 5)), rng.standard_normal(5)
    through, untracked, direct = Moments(4, 6, track_partner=True), Moments(4, 6), Moments(4, 5)
    for rows in (slice(0, 120), slice(120, 300)):
        through.add(x[rows], z[rows])
        untracked.add(x[rows], z[rows])
        direct.add(x[rows], z[rows] @ weights + bias)
    mapped = through.mapped(weights, bias)
    blind = untracked.mapped(weights, bias)  # all but ‖y‖², which needs z zᵀ
    np.testing.assert_array_equal(blind.cross, mapped.cross)
    assert np.isnan(blind.partner_squares)
    np.testing.assert_allclose(mapped.gram, direct.gram)
    np.testing.assert_allclose(mapped.cross, direct.cross)
    np.testing.assert_allclose(mapped.partner_total, direct.partner_total)
    np.testing.assert_allclose(mapped.cross_covariance(), direct.cross_covariance(), atol=1e-12)
    assert mapped.partner_squares == pytest.approx(direct.partner_squares)
    assert mapped.count == direct.count


def test_restricting_in_place_gives_the_moments_of_the_entries_kept():
    """`restrict` (in place) and `restricted` (a copy) both give what accumulating the kept entries alone gives; the
    copy leaves the moments it came from whole."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((200, 7)) + 2.0, rng.standard_normal((200, 3))
    index = np.array([0, 3, 4, 6])
    whole, alone = Moments(7, 3), Moments(4, 3)
    for rows in (slice(0, 90), slice(90, 200)):
        whole.add(x[rows], y[rows])
        alone.add(x[rows][:, index], y[rows])
    copied = whole.restricted(index)
    assert whole.dim == 7 and whole.centred_gram.shape == (7, 7)
    whole.restrict(index)
    for moments in (copied, whole):
        assert moments.dim == 4 and moments.count == 200
        np.testing.assert_allclose(moments.covariance(), alone.covariance(), atol=1e-12)
        np.testing.assert_allclose(moments.cross_covariance(), alone.cross_covariance(), atol=1e-12)
        np.testing.assert_allclose(moments.mean, alone.mean)


def test_gathered_rows_reach_the_moments_a_few_batches_at_once(monkeypatch):
    """Batches wait until they hold GATHER_ROWS rows; the moments are those of every row, as if added one by one."""
    monkeypatch.setattr(statistics, "GATHER_ROWS", 50)
    rng = np.random.default_rng(3)
    direct, gathered = Moments(6, 3), Gathered(Moments(6, 3))
    counts = []
    for rows in (5, 40, 7, 300, 2):
        x, y = rng.standard_normal((rows, 6)), rng.standard_normal((rows, 3))
        direct.add(x, y)
        gathered.add(x, y)
        counts.append(gathered.moments.count)
    assert counts == [0, 0, 52, 352, 352]
    result = gathered.result()
    assert result.count == direct.count == 354
    np.testing.assert_allclose(result.gram, direct.gram, rtol=1e-12)
    np.testing.assert_allclose(result.cross, direct.cross, rtol=1e-12)
    assert result.partner_squares == pytest.approx(direct.partner_squares, rel=1e-12)
