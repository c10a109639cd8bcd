"""Fidelity of a per-token output: the sentence embedding is the mean over unpadded tokens only; computed a sentence
at a time, with the same result as over the whole batch."""

from __future__ import annotations

import numpy as np

from compressor import fidelity
from compressor.fidelity import _cosine, _mean_pooled, _per_token_cosines, _positions


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
