"""The onnxsim comparison of BENCHMARKS.md: per-draw results, their means, and the peer's failures kept visible."""

from __future__ import annotations

import pytest

from bench.accuracy_tables import _peer_table, peer_means


def _run(seed: int, onnxsim: float, compress: float) -> dict:
    return {
        "keep": 0.4,
        "seed": seed,
        "accuracy": onnxsim,
        "keep_achieved": 0.396,
        "seconds": 80.0,
        "compress_same_count": compress,
        "compress_same_count_achieved": 0.3961,
        "compress_seconds": 30.0,
    }


def test_comparison_is_the_mean_over_the_draws_where_onnxsim_ran():
    peers = [_run(0, 0.86, 0.85), _run(1, 0.84, 0.87), {"keep": 0.4, "seed": 2, "accuracy": None, "error": "boom"}]
    (mean,) = peer_means(peers)
    assert mean["draws"] == 2 and mean["compress_ahead"] == 1
    assert mean["onnxsim"] == pytest.approx(0.85) and mean["compress"] == pytest.approx(0.86)
    table = "\n".join(_peer_table(peers))
    assert (
        "| 0.4 | 0.396 | 0.8600 / 0.8500 | 0.8400 / 0.8700 | onnxsim failed: boom | 0.8500 | 0.8600 | 1 of 2 |" in table
    )
    assert "| 0.8 | - |" in table  # a keep without runs is shown as missing, not dropped
