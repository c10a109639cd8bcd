"""Capture, scoring and recovery on ALBERT (one layer's weights applied at every depth) and ViT (image inputs, no
attention mask): statistics pool every application of a shared weight, and image tokens are all counted."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_families
from onnx import numpy_helper

from compressor.calibration import from_arrays
from compressor.capture import capture, capture_session, plan_capture
from compressor.pipeline import compress
from compressor.recovery import SHARED_PRUNED, projections, recover
from graph_passes import analyze, apply_masks, initializer_behind, linear_biases, load_model

SAMPLES = 24


def _setup(family_cache, family: str):
    _, path = family_cache(family)
    analysis = analyze(load_model(path))
    feeds = tiny_families.sample_inputs(family, SAMPLES, 10, seed=5)
    return analysis, feeds, from_arrays(feeds, analysis.model, SAMPLES)


def _half(analysis) -> dict[str, np.ndarray]:
    return {g.name: np.arange(g.units) % 2 == 0 for g in analysis.groups if g.kind in ("heads", "ffn") and g.prunable}


def test_a_shared_layer_is_tapped_at_every_application_and_its_moments_pool_them(family_cache):
    analysis, feeds, data = _setup(family_cache, "albert")
    (taps,) = plan_capture(analysis).layers
    assert len(taps.applications) == 3 and len(set(taps.heads_tensors)) == 3
    stats = capture(analysis, data, list(range(SAMPLES)), batch_size=SAMPLES)
    tensors = [n for use in taps.applications for n in use[:2]]
    values = capture_session(analysis.model, tensors).run(tensors, feeds)
    mask = feeds["attention_mask"].astype(bool)
    rows = np.vstack([np.hstack([values[2 * k][mask], values[2 * k + 1][mask]]) for k in range(3)])
    assert stats.layers[0].count == 3 * mask.sum()
    expected = rows.T.astype(np.float64) @ rows  # capture's products are float32 (`compressor.statistics`)
    assert np.allclose(stats.layers[0].gram, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_a_shared_projection_is_refit_once_on_every_application_and_its_biases_follow(family_cache):
    analysis, _, data = _setup(family_cache, "albert")
    masks = _half(analysis)
    pruned = apply_masks(analysis, masks)
    result = recover(analysis, pruned, masks, data, list(range(SAMPLES)), batch_size=8)
    assert [len(p.activations) for p in projections(analysis, masks)] == [3, 3]
    assert result.kept and all(r.applied and r.error_after < r.error_before for r in result.refits)
    values = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for projection in projections(analysis, masks):
        biases = [values[initializer_behind(result.model, b)] for b in linear_biases(result.model, projection.weight)]
        assert len(biases) == 3 and all(np.array_equal(b, biases[0]) for b in biases)
    assert result.output_error["refit"] < result.output_error["sliced"]


def test_refitting_on_pruned_inputs_leaves_a_shared_projection_as_sliced_and_says_why(family_cache):
    analysis, _, data = _setup(family_cache, "albert")
    masks = _half(analysis)
    result = recover(analysis, apply_masks(analysis, masks), masks, data, list(range(SAMPLES)), 8, inputs="pruned")
    assert [(r.applied, r.skipped) for r in result.refits] == [(False, SHARED_PRUNED)] * 2


def test_image_tokens_all_count_without_an_attention_mask(family_cache):
    analysis, _, data = _setup(family_cache, "vit")
    stats = capture(analysis, data, list(range(SAMPLES)), batch_size=10)
    tokens = 1 + (tiny_families.IMAGE // 8) ** 2  # the class token and the patches
    assert [m.count for m in stats.layers] == [SAMPLES * tokens] * 2


@pytest.mark.parametrize("family", ["vit", "albert"])
def test_compress_keeps_half_with_a_faithful_model(family_cache, family):
    _, path = family_cache(family)
    feeds = tiny_families.sample_inputs(family, 64, 10, seed=6)
    result = compress(path, feeds, keep=0.5)
    assert result.report["keep_achieved"] == pytest.approx(0.5, abs=0.05)
    assert result.report["recovery"]["kept"]
    assert result.report["fidelity"]["mean_cosine"] > 0.98
