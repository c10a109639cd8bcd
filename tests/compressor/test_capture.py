"""Capture: the stream's products with each layer's units are gathered only for what reads them (scoring the
stream), and leaving them out changes nothing else."""

from __future__ import annotations

import numpy as np
import tiny_models

from compressor import budget, scoring
from compressor.calibration import from_arrays
from compressor.capture import capture
from graph_passes import analyze, load_model


def test_without_the_stream_the_layers_moments_and_mi_masks_are_the_same(export_cache):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    analysis = analyze(load_model(path))
    data = from_arrays(tiny_models.sample_inputs("bert", 24, 9, seed=5), analysis.model, 24)
    full, lean = (capture(analysis, data, list(range(24)), 8, stream_cross=cross) for cross in (True, False))
    assert len(full.hidden) == len(lean.hidden) == len(full.layers)
    assert all(h.partner_dim == 0 for h in lean.hidden) and all(h.partner_dim > 0 for h in full.hidden)
    for one, other in zip(full.layers, lean.layers):
        assert np.array_equal(one.centred_gram, other.centred_gram) and np.array_equal(one.total, other.total)
    counts = budget.allocate(analysis, 0.5, ("heads", "ffn"))
    for allocation in scoring.ALLOCATIONS:
        masks = [scoring.mi_masks(stats, analysis, counts, allocation) for stats in (full, lean)]
        assert masks[0].keys() == masks[1].keys()
        assert all(np.array_equal(masks[0][name], masks[1][name]) for name in masks[0])
