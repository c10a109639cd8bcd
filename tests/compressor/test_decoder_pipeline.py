"""`compress` on decoders end to end: text calibration, MI masks, slicing, recovery, validation and fidelity."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_decoders

from compressor.decoder import declared_shapes, detect, fit_empty_caches
from compressor.pipeline import compress
from compressor.recovery import projections, residual_stream
from graph_passes import analyze, load_model


@pytest.fixture(scope="module")
def calibration_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("decoder-calib") / "calib.txt"
    path.write_text("\n<|endoftext|>\n".join(tiny_decoders.text(80, seed=9)) + "\n")
    return path


def _masks_by_layer(masks: dict[str, np.ndarray], kind: str) -> dict[int, np.ndarray]:
    return {int(name[len(kind) + 1 : -1]): mask for name, mask in masks.items() if name.startswith(f"{kind}[")}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_compress_without_recovery_is_the_torch_pruning_of_its_masks(decoder_cache, calibration_text, family):
    model, path = decoder_cache(family)
    result = compress(path, calibration_text, keep=0.6, samples=40, max_length=16, batch_size=8, recover=False)
    heads, ffn = _masks_by_layer(result.masks, "heads"), _masks_by_layer(result.masks, "ffn")
    assert sum(int(m.sum()) for m in ffn.values()) < 2 * 96
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = tiny_decoders.sample_ids(2, 9, seed=6)
    expected = tiny_decoders.torch_steps(tiny_decoders.torch_pruned(model, heads, ffn), ids, prefill=6)
    for want, have in zip(expected, tiny_decoders.onnx_steps(session, ids, prefill=6), strict=True):
        np.testing.assert_allclose(have, want, atol=1e-4, rtol=0)
    assert result.report["calibration"]["samples"] == 40 and result.report["fidelity"]["mean_cosine"] > 0.5


def test_compress_with_recovery_gives_a_decoder_whose_cache_is_self_consistent(decoder_cache, calibration_text):
    _, path = decoder_cache("qwen2")
    result = compress(path, calibration_text, keep=0.5, samples=40, max_length=16, batch_size=8)
    assert result.report["recovery"] is not None
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = tiny_decoders.sample_ids(1, 8, seed=2)
    steps = np.concatenate(tiny_decoders.onnx_steps(session, ids, prefill=5), axis=1)
    np.testing.assert_allclose(steps, tiny_decoders.onnx_steps(session, ids, prefill=8)[0], atol=1e-4, rtol=0)
    flops = result.report["flops_per_token"]
    assert flops["after"] < flops["before"]


def test_empty_caches_are_fitted_to_the_pruned_model(decoder_cache):
    _, path = decoder_cache("mistral")
    model = onnx.load(str(path))
    feeds = detect(model).feeds({"input_ids": np.full((2, 3), 5)})
    declared = declared_shapes(model)
    declared["past_key_values.0.key"] = ["batch_size", 1, "past_sequence_length", 16]
    fitted = fit_empty_caches(declared, feeds)
    assert fitted["past_key_values.0.key"].shape == (2, 1, 0, 16)
    assert fitted["past_key_values.0.value"].shape == (2, 2, 0, 16)
    assert fitted["input_ids"] is feeds["input_ids"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_stream_refits_find_every_residual_add_and_bring_the_logits_closer(decoder_cache, calibration_text, family):
    _, path = decoder_cache(family)
    result = compress(path, calibration_text, keep=0.5, samples=40, max_length=16, batch_size=8)
    refit = result.report["recovery"]  # stream refits are a decoder's default
    assert refit["inputs"] == "stream" and refit["output_error"]["refit"] < refit["output_error"]["sliced"]
    analysis = analyze(load_model(path))
    found = projections(analysis, result.masks)
    assert len(found) == 4 and all(residual_stream(analysis.model, analysis.linear(p.weight).node_index) for p in found)
