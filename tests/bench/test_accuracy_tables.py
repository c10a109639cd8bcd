"""The accuracy tables of BENCHMARKS.md: means over the calibration draws, and the onnxsim comparison's per-draw
results, their means, and the peer's failures kept visible."""

from __future__ import annotations

import pytest

from bench.accuracy_tables import _peer_table, _table, peer_means


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


def test_an_accuracy_cell_is_the_mean_of_its_draws_and_a_budget_miss_shows_as_not_applicable():
    def row(method: str, seed: int, accuracy: float | None) -> dict:
        return {
            "granularity": "ffn",
            "recovery": "on",
            "keep": 0.3,
            "method": method,
            "seed": seed,
            "accuracy": accuracy,
        }

    rows = [row("mi", seed, value) for seed, value in enumerate((0.86, 0.87, 0.88))]
    rows += [row("magnitude", 0, 0.80), row("magnitude", 1, None)]
    table = "\n".join(_table(rows, "ffn", "on"))
    assert "| 0.3 | **0.8700** | n/a | n/a | n/a |" in table
    assert "| 0.2 | n/a | n/a | n/a | n/a |" in table
