"""`compress --optimize`: ONNX Runtime's fusion on pruned graphs whose layers keep different head counts."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models

from compressor import compress
from compressor.calibration import from_arrays
from compressor.fidelity import session
from compressor.optimization import fuse
from graph_passes import analyze, apply_masks, load_model


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_pruned_layers_with_different_head_counts_fuse_into_attention(export_cache, arch):
    _, path = export_cache(arch, "classifier", "optimum-opset17")
    analysis = analyze(load_model(path))
    masks = {"heads[0]": np.array([True, False, True, False]), "heads[1]": np.array([False, True, False, False])}
    masks["ffn[1]"] = np.arange(96) % 3 == 0
    pruned = apply_masks(analysis, masks)
    fused = fuse(pruned)
    assert sum(n.op_type == "Attention" for n in fused.graph.node) == 2
    feeds = tiny_models.sample_inputs(arch, 4, 12, seed=2)
    reference, output = (session(m).run(None, feeds)[0] for m in (pruned, fused))
    assert np.allclose(reference, output, atol=1e-4)


def test_optimize_ships_the_fused_model_only_when_it_is_not_slower(export_cache):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    data = tiny_models.sample_inputs("bert", 64, 12, seed=3)
    result = compress(path, data, keep=0.5, optimize=True)
    found = result.report["optimization"]
    assert found["fused_ops"]["Attention"] == 2 and found["output_difference"] < 1e-3
    fused = {n.op_type for n in result.model.graph.node} >= {"Attention", "SkipLayerNormalization"}
    timing = found["p50_ms"]
    assert found["applied"] == (timing["fused"] <= timing["unfused"]) == fused
    plain = compress(path, data, keep=0.5)
    assert plain.report["optimization"] is None
    feeds = next(from_arrays(data, result.model, 8).batches(range(8), 8))
    assert np.allclose(session(result.model).run(None, feeds)[0], session(plain.model).run(None, feeds)[0], atol=1e-4)
