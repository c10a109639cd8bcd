"""Fidelity of a per-token output: the sentence embedding is the mean over unpadded tokens only."""

from __future__ import annotations

import numpy as np

from compressor.fidelity import _cosine, _mean_pooled, _positions


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
