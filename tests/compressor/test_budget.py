"""--keep turned into kept units: within 1% of the request, and clear errors for what cannot be reached."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.budget import allocate, encoder_matrices
from compressor.errors import BudgetError
from graph_passes import analyze, apply_masks, load_model


@pytest.fixture(scope="module")
def analysis(export_cache):
    return analyze(load_model(export_cache("bert", "classifier", "optimum-opset17")[1]))


ENCODER_WEIGHTS = 2 * (4 * 64 * 64 + 2 * 64 * 96)  # tiny BERT: Q, K, V, attention output, FFN up and down per layer


def _pruned_encoder_weights(analysis, counts: dict[str, int]) -> int:
    """Weights left in the encoder matrices of the model sliced to `counts` units per group, counted on its tensors."""
    masks = {name: np.arange(analysis.group(name).units) < count for name, count in counts.items()}
    sizes = {t.name: int(np.prod(t.dims)) for t in apply_masks(analysis, masks).graph.initializer}
    return sum(sizes[m.weight] for m in encoder_matrices(analysis))


@pytest.mark.parametrize("keep", [1.0, 0.8, 0.6, 0.4, 0.25])
@pytest.mark.parametrize("granularity", [("heads", "ffn"), ("heads", "ffn", "hidden"), ("ffn", "hidden")])
def test_allocation_lands_within_one_percent(analysis, keep, granularity):
    """Measured on the sliced model's weight tensors against the hand count, not by the arithmetic allocate uses."""
    counts = allocate(analysis, keep, granularity)
    assert abs(_pruned_encoder_weights(analysis, counts) / ENCODER_WEIGHTS - keep) <= 0.01
    assert {name.split("[")[0] for name in counts} == set(granularity)


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_keep_outside_the_unit_interval_is_refused(analysis, keep):
    with pytest.raises(BudgetError, match=r"--keep must be in \(0, 1\]"):
        allocate(analysis, keep, ("heads", "ffn"))


def test_unreachable_keep_names_the_floor(analysis):
    with pytest.raises(BudgetError, match="cannot be reached by pruning heads"):
        allocate(analysis, 0.4, ("heads",))
