"""--keep turned into kept units: within 1% of the request, and clear errors for what cannot be reached."""

from __future__ import annotations

import pytest

from compressor.budget import allocate, encoder_matrices, parameter_count
from compressor.errors import BudgetError
from graph_passes import analyze, load_model


@pytest.fixture(scope="module")
def analysis(export_cache):
    return analyze(load_model(export_cache("bert", "classifier", "optimum-opset17")[1]))


@pytest.mark.parametrize("keep", [1.0, 0.8, 0.6, 0.4, 0.25])
@pytest.mark.parametrize("granularity", [("heads", "ffn"), ("heads", "ffn", "hidden"), ("ffn", "hidden")])
def test_allocation_lands_within_one_percent(analysis, keep, granularity):
    counts = allocate(analysis, keep, granularity)
    matrices = encoder_matrices(analysis)
    assert len(matrices) == 2 * 6  # Q, K, V, attention output, FFN up and down per layer
    achieved = parameter_count(analysis, matrices, counts) / parameter_count(analysis, matrices, {})
    assert abs(achieved - keep) <= 0.01
    assert {name.split("[")[0] for name in counts} == set(granularity)


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_keep_outside_the_unit_interval_is_refused(analysis, keep):
    with pytest.raises(BudgetError, match=r"--keep must be in \(0, 1\]"):
        allocate(analysis, keep, ("heads", "ffn"))


def test_unreachable_keep_names_the_floor(analysis):
    with pytest.raises(BudgetError, match="cannot be reached by pruning heads"):
        allocate(analysis, 0.4, ("heads",))
