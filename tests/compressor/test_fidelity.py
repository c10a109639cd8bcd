"""Fidelity of a per-token output: the sentence embedding is the mean over unpadded tokens only; computed a sentence
at a time, and large outputs a few samples a run, with the same result as over the whole batch."""

from __future__ import annotations

import numpy as np
import pytest

from bench.large_models import DecoderShape, build_decoder
from bench.workload import feeds
from compressor import fidelity, recovery
from compressor.calibration import from_arrays
from compressor.fidelity import _cosine, _mean_pooled, _per_token_cosines, _positions
from graph_passes import load_model


def test_mean_pooling_ignores_padded_tokens():
    tokens = np.array([[[1.0, 0.0], [0.0, 1.0], [100.0, -100.0]]])
    mask = np.array([[True, True, False]])
    assert np.allclose(_mean_pooled(tokens, mask), [[0.5, 0.5]])
    other = np.array([[[1.0, 0.0], [0.0, 1.0], [-7.0, 3.0]]])  # differs only where padded
    assert np.allclose(_cosine(_mean_pooled(tokens, mask), _mean_pooled(other, mask)), [1.0])


def test_outputs_of_image_inputs_count_every_patch():
    patches = np.zeros((2, 5, 3))
    assert _positions({"pixel_values": np.zeros((2, 3, 8, 8), dtype=np.float32)}, patches).all()
    ids = {"input_ids": np.ones((2, 5), dtype=np.int64), "attention_mask": np.array([[1, 1, 1, 0, 0]] * 2)}
    assert _positions(ids, patches).sum() == 6


def test_per_token_cosines_a_few_rows_at_a_time_equal_the_whole_batch_exactly(monkeypatch):
    monkeypatch.setattr(fidelity, "ROWS", 3)  # parts of 3 and 2 rows, and sentences of one token
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(4, 6, 50)).astype(np.float32) for _ in range(2))
    for lengths in ([6, 1, 1, 5], [1, 0, 0, 0], [2, 2, 1, 0]):
        mask = np.arange(6) < np.array(lengths)[:, None]
        tokens, sentences = _per_token_cosines(a, b, mask)
        assert np.array_equal(tokens, _cosine(a[mask], b[mask]))
        assert np.array_equal(sentences, _cosine(_mean_pooled(a, mask), _mean_pooled(b, mask)))


def held_out_runs(data, width: int | None) -> list[dict]:
    return fidelity.held_out_runs(data, list(range(8)), width, batch_size=8)


def test_large_outputs_are_compared_a_few_samples_a_run(tmp_path, monkeypatch):
    """A decoder whose two models' logits for a batch would pass RUN_BYTES is run a few samples at a time, with the
    same cosines as one batch."""
    shape = DecoderShape(layers=1, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=60, positions=32)
    model = load_model(build_decoder(shape, tmp_path / "model.onnx"))
    mask = (np.arange(12) < np.array([12, 3, 7, 12, 5, 9, 12, 2])[:, None]).astype(np.int64)
    data = from_arrays({"input_ids": feeds(model, 8, 12)["input_ids"], "attention_mask": mask}, model, 8)
    original = fidelity.session(model)
    other = fidelity.session(load_model(build_decoder(shape, tmp_path / "other" / "model.onnx", seed=1)))
    width = fidelity.output_width(original)
    whole = fidelity.compare(fidelity.Reference(fidelity.outputs_of(original, held_out_runs(data, width))), other)
    assert whole["samples"] == 8
    monkeypatch.setattr(fidelity, "RUN_BYTES", 2 * 4 * data.max_length * shape.vocab * 3)
    assert fidelity.run_size(fidelity.output_width(original), data.max_length, 8) == 3
    assert fidelity.output_width(model) == shape.vocab
    parts = fidelity.Reference(fidelity.outputs_of(original, held_out_runs(data, width)))
    assert [len(feeds["input_ids"]) for feeds in parts.runs] == [3, 3, 2]
    assert fidelity.compare(parts, other) == whole


def test_recovery_output_error_runs_large_outputs_a_few_samples_at_a_time(tmp_path, monkeypatch):
    shape = DecoderShape(layers=1, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=60, positions=32)
    model = load_model(build_decoder(shape, tmp_path / "model.onnx"))
    mask = (np.arange(12) < np.array([12, 3, 7, 12, 5, 9, 12, 2])[:, None]).astype(np.int64)
    data = from_arrays({"input_ids": feeds(model, 8, 12)["input_ids"], "attention_mask": mask}, model, 8)
    other = load_model(build_decoder(shape, tmp_path / "other" / "model.onnx", seed=1))
    monkeypatch.setattr(recovery, "CHECK_EVERY", 1)  # all 8 samples held out
    original = fidelity.session(model)
    whole = recovery.output_reference(original, data, list(range(8)), 8)
    assert [len(feeds["input_ids"]) for feeds in whole.runs] == [8]
    monkeypatch.setattr(fidelity, "RUN_BYTES", 2 * 4 * 12 * shape.vocab * 3)  # 3 samples of the batch's 12 tokens
    parts = recovery.output_reference(original, data, list(range(8)), 8)
    assert [len(feeds["input_ids"]) for feeds in parts.runs] == [3, 3, 2]
    assert recovery._output_error(parts, other) == pytest.approx(recovery._output_error(whole, other), rel=1e-12)
