"""The Gaussian MI estimates against closed forms, and the elimination's preference for non-redundant units."""

from __future__ import annotations

import numpy as np

from compressor import scoring
from compressor.scoring import (
    InformationLoss,
    ReadLoss,
    RefitLoss,
    _conditioned,
    _eliminate,
    _read_grams,
    _remove,
    _ridge,
    layer_masks,
    refit_selection,
    top_k,
)


def marginal_mi(cov: np.ndarray, units: int) -> np.ndarray:
    """Each unit's own Gaussian I(u; Y) = -1/2 log(1 - R²)."""
    cross, cov_y = cov[:units, units:], cov[units:, units:]
    r2 = np.einsum("iy,yi->i", cross, np.linalg.solve(cov_y, cross.T)) / np.diag(cov)[:units]
    return -0.5 * np.log1p(-r2)


def test_block_information_matches_the_gaussian_closed_form():
    """With one unit per block, the loss of the only unit is its MI with Y: -1/2 log(1 - rho²)."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal((200_000, 1))
    for rho in (0.3, 0.9):
        x = rho * y + np.sqrt(1 - rho**2) * rng.standard_normal((200_000, 1))
        cov = np.cov(np.hstack([x, y]).T)
        marginal, conditional = _conditioned(cov[:1, :1], cov[:1, 1:], cov[1:, 1:])
        mi = 0.5 * (np.log(np.linalg.inv(conditional)[0, 0]) - np.log(np.linalg.inv(marginal)[0, 0]))
        assert abs(mi - (-0.5 * np.log(1 - rho**2))) < 0.01


def test_elimination_drops_a_duplicate_before_a_weaker_unique_unit():
    """u0 and u1 carry the same signal; u2 a weaker, different one. Keeping two of three must keep u2: each
    duplicate alone carries more (1.25 nats against 0.51), but losing one costs only 0.32 while the other stays."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 50_000))
    units = np.stack(
        [
            a + 0.3 * rng.standard_normal(50_000),
            a + 0.3 * rng.standard_normal(50_000),
            0.8 * b + 0.6 * rng.standard_normal(50_000),
        ],
        axis=1,
    )
    targets = np.stack([a, b], axis=1)
    cov = np.cov(np.hstack([units, targets]).T)
    system = _conditioned(cov[:3, :3], cov[:3, 3:], cov[3:, 3:])
    alive = _eliminate([InformationLoss(*system)], [np.array([i]) for i in range(3)], 2)
    assert alive[2] and alive.sum() == 2
    marginal_choice = top_k(marginal_mi(cov, 3), 2)
    assert not marginal_choice[2]  # what per-unit MI alone would have kept: both duplicates


def test_heads_are_removed_as_blocks():
    rng = np.random.default_rng(2)
    signal = rng.standard_normal((20_000, 2))
    head0 = signal[:, :1] + 0.1 * rng.standard_normal((20_000, 2))  # informative head of width 2
    head1 = rng.standard_normal((20_000, 2))  # noise head
    cov = np.cov(np.hstack([head0, head1, signal]).T)
    system = _conditioned(cov[:4, :4], cov[:4, 4:], cov[4:, 4:])
    alive = _eliminate([InformationLoss(*system)], [np.arange(2), np.arange(2, 4)], 1)
    assert alive.tolist() == [True, False]


def test_loss_is_summed_over_systems():
    """The hidden stream informs several layers: a channel useless to one but vital to another is kept."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 30_000))
    units = np.stack(
        [a + 0.5 * rng.standard_normal(30_000), b + 0.5 * rng.standard_normal(30_000), rng.standard_normal(30_000)],
        axis=1,
    )
    systems = []
    for target in (a, b):
        cov = np.cov(np.hstack([units, target[:, None]]).T)
        systems.append(_conditioned(cov[:3, :3], cov[:3, 3:], cov[3:, 3:]))
    alive = _eliminate([InformationLoss(*s) for s in systems], [np.array([i]) for i in range(3)], 2)
    assert alive.tolist() == [True, True, False]


def test_read_loss_is_the_variance_the_rest_cannot_explain():
    """Removing one unit of a correlated pair costs only what the other cannot predict; through the same weights,
    an independent unit of smaller variance costs more, and one that nothing reads costs nothing."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal(40_000)
    units = np.stack(
        [
            a + 0.2 * rng.standard_normal(40_000),
            a + 0.2 * rng.standard_normal(40_000),
            0.6 * rng.standard_normal(40_000),
        ],
        axis=1,
    )
    cov = np.cov(units.T)
    read = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    system = ReadLoss(cov, read @ read.T)
    loss = system.losses([np.linalg.inv(cov)], np.ones(3, dtype=int), np.arange(3))
    expected = [1 / np.linalg.inv(cov)[i, i] for i in range(3)]  # conditional variance of each unit given the rest
    assert np.allclose(loss, expected)
    assert loss[2] > loss[0]
    unread = ReadLoss(cov, np.diag([1.0, 1.0, 0.0]))
    assert unread.losses([np.linalg.inv(cov)], np.ones(3, dtype=int), np.arange(3))[2] == 0
    alive = _eliminate([system], [np.array([i]) for i in range(3)], 2)
    assert alive[2] and alive.sum() == 2


def test_read_loss_scores_a_head_as_a_block():
    """Block widths above one use the block's conditional covariance: tr(Σ_b|rest G_bb)."""
    rng = np.random.default_rng(5)
    cov = np.cov(rng.standard_normal((500, 4)) @ rng.standard_normal((4, 4)), rowvar=False)
    read = rng.standard_normal((4, 3))
    loss = ReadLoss(cov, read @ read.T).losses([np.linalg.inv(cov)], np.array([2, 2]), np.arange(4))
    precision = np.linalg.inv(cov)
    for block, value in zip((slice(0, 2), slice(2, 4)), loss):
        conditional = np.linalg.inv(precision[block, block])
        assert np.isclose(value, np.trace(conditional @ read[block] @ read[block].T))


def test_a_head_is_not_dropped_because_the_neurons_computed_from_it_repeat_it():
    """Head 0 (two dimensions) is strong, head 1 weak; the two FFN neurons are copies of head 0's output, as neurons
    computed from the attention output can be. Conditioned on the neurons, head 0 would look redundant; but recovery
    refits the attention output from the kept heads only, and the neurons change once head 0 is gone."""
    rng = np.random.default_rng(6)
    head0 = 2.0 * rng.standard_normal((50_000, 2))
    head1 = 0.5 * rng.standard_normal((50_000, 2))
    neurons = head0 + 0.05 * rng.standard_normal((50_000, 2))
    cov = np.cov(np.hstack([head0, head1, neurons]).T)
    kinds = [
        (ReadLoss(_ridge(cov[:4, :4]), np.eye(4)), [np.arange(2), np.arange(2, 4)]),
        (ReadLoss(_ridge(cov[4:, 4:]), np.eye(2)), [np.array([0]), np.array([1])]),
    ]
    heads, kept_neurons = layer_masks(kinds, (1, 2))
    assert heads.tolist() == [True, False] and kept_neurons.all()
    joint = ReadLoss(cov, np.eye(6)).losses([np.linalg.inv(cov)], np.array([2, 2, 1, 1]), np.arange(6))
    assert joint[0] < joint[1]  # one system over heads and neurons would rank the strong head below the weak one


def _refit_error(units: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error of the least-squares fit of `target` from `units` (no intercept)."""
    weights = np.linalg.lstsq(units, target, rcond=None)[0]
    return float(np.mean(np.sum(np.square(units @ weights - target), axis=1)))


def test_refit_loss_is_what_a_least_squares_refit_of_the_rest_loses():
    """Each block's loss equals the rise of the refit's squared error when the block is removed and the rest are
    solved again (single units and blocks of two)."""
    rng = np.random.default_rng(6)
    units = rng.standard_normal((5_000, 6)) @ rng.standard_normal((6, 6))
    target = units @ rng.standard_normal((6, 3)) + 0.1 * rng.standard_normal((5_000, 3))
    second, cross = units.T @ units / len(units), units.T @ target / len(units)
    full = _refit_error(units, target)
    for widths in (np.ones(6, dtype=int), np.array([2, 2, 2])):
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
        system = RefitLoss(second, cross)
        loss = system.losses(system.inverted(), widths, np.arange(6))
        for start, width, value in zip(starts, widths, loss):
            rest = np.setdiff1d(np.arange(6), np.arange(start, start + width))
            assert np.isclose(value, _refit_error(units[:, rest], target) - full, rtol=1e-6)


def test_a_removal_leaves_the_precision_and_the_refit_weights_of_the_rest(monkeypatch):
    """The Schur step on [Σ⁻¹ | Σ⁻¹ C] gives what inverting and solving over the kept units alone gives (its update
    taken two rows at a time, as a large system's is)."""
    monkeypatch.setattr(scoring, "SCHUR_ROWS", 2)
    rng = np.random.default_rng(8)
    units = rng.standard_normal((2_000, 7)) @ rng.standard_normal((7, 7))
    second, cross = units.T @ units / len(units), units.T @ rng.standard_normal((2_000, 3)) / len(units)
    keep = np.array([True, False, True, True, False, True, True])
    state = _remove(RefitLoss(second, cross).inverted()[0], keep)
    rest = np.linalg.inv(second[np.ix_(keep, keep)])
    assert np.allclose(state[:, :5], rest) and np.allclose(state[:, 5:], rest @ cross[keep])


def test_read_grams_through_the_stream_or_the_read_columns_equal_the_product_of_the_reads():
    rng = np.random.default_rng(9)
    parts = [rng.standard_normal((5, 4)), rng.standard_normal((3, 4))]
    for columns in (2, 9):  # fewer read columns than stream channels, and more
        reads = rng.standard_normal((4, columns))
        for part, gram in zip(parts, _read_grams(parts, reads)):
            np.testing.assert_allclose(gram, (part @ reads) @ (part @ reads).T)
    assert np.allclose(_read_grams(parts, None)[1], parts[1] @ parts[1].T)


def test_refit_selection_keeps_one_of_two_copies_and_the_unit_the_target_needs():
    """The target reads units 0 and 2; unit 1 copies unit 0 and unit 3 is noise the target ignores: of two kept, one
    is a copy of 0 and the other is 2, though unit 3 has the largest variance."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((2, 20_000))
    units = np.stack([a, a + 0.01 * rng.standard_normal(20_000), b, 3 * rng.standard_normal(20_000)], axis=1)
    target = (a + b)[:, None]
    kept = refit_selection(np.cov(units.T), units.T @ target / len(units), [np.array([i]) for i in range(4)], 2)
    assert kept[2] and kept[:2].sum() == 1 and not kept[3]


def test_precisions_of_a_covariance_from_fewer_rows_than_units_stay_exact_through_removals():
    """A wide layer calibrated on few tokens (768 rectified units from 150 rows, condition 2e4 after the ridge): the
    precision each system starts from inverts its covariance, and a removal's Schur step leaves the inverse of the
    kept units' covariance. Blockwise inverses by explicit Schur complements lost the small eigenvalues here
    (residual 0.5)."""
    rng = np.random.default_rng(0)
    mixed = (rng.standard_normal((150, 768)) * np.logspace(0, -3, 768)) @ np.linalg.qr(rng.standard_normal((768,) * 2))[
        0
    ]
    units = np.maximum(mixed, 0) + 0.1 * mixed
    covariance = _ridge(np.cov(units.T))
    cross = units.T @ rng.standard_normal((150, 4)) / 150
    systems = [RefitLoss(covariance, cross), ReadLoss(covariance, np.eye(768)), InformationLoss(covariance, covariance)]
    for system in systems:
        precision = system.inverted()[0][:, :768]
        assert np.abs(covariance @ precision - np.eye(768)).max() < 1e-8
    keep = rng.random(768) < 0.6
    rest = _remove(systems[0].inverted()[0], keep)
    kept = covariance[np.ix_(keep, keep)]
    assert np.abs(kept @ rest[:, : keep.sum()] - np.eye(keep.sum())).max() < 1e-8
    assert np.allclose(rest[:, keep.sum() :], np.linalg.solve(kept, cross[keep]), rtol=1e-6, atol=1e-9)
