"""wanda's hidden-stream score against a direct computation over every weight that reads the stream."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models

from compressor.calibration import from_arrays
from compressor.capture import capture, capture_session, token_mask, token_rows
from compressor.scoring import input_norms, wanda_scores
from graph_passes import analyze, load_model


def _direct_score(analysis, feeds: dict[str, np.ndarray], weight: str) -> np.ndarray:
    """|W|·‖x‖ per hidden channel for one reader, its input run and measured here, not by capture."""
    linear = analysis.linear(weight)
    values = capture_session(analysis.model, [linear.activation]).run([linear.activation], feeds)[0]
    rows = values[token_mask(feeds)] if values.ndim == 3 else values
    rms = np.sqrt(np.square(rows.astype(np.float64)).mean(axis=0))
    return (np.moveaxis(np.abs(analysis.values[weight]), linear.in_axis, 0) * rms[:, None]).sum(axis=1)


@pytest.mark.parametrize(("arch", "head"), [("bert", "classifier"), ("bert", "encoder"), ("distilbert", "encoder")])
def test_every_reader_of_the_hidden_stream_counts(export_cache, arch, head):
    """The score is the sum over all readers: Q, K, V and the FFN up projection of each layer, and the head's or the
    pooler's dense. Each reader moves the score, so leaving any one out would break the equality."""
    _, path = export_cache(arch, head, "optimum-opset17")
    analysis = analyze(load_model(path))
    feeds = tiny_models.sample_inputs(arch, 12, 9, seed=3)
    stats = capture(analysis, from_arrays(feeds, analysis.model, 12), list(range(12)), batch_size=12)
    hidden = analysis.group("hidden")
    ffn_up = {w for g in analysis.by_kind("ffn") for w in g.writers}
    assert ffn_up <= set(hidden.readers) and len(hidden.readers) >= 4 * len(ffn_up)
    parts = [_direct_score(analysis, feeds, weight) for weight in hidden.readers]
    assert all(part.min() > 0 for part in parts)
    assert np.allclose(wanda_scores(analysis, hidden, input_norms(stats)), sum(parts), rtol=1e-5)


def test_a_per_sentence_reader_input_is_taken_as_it_is():
    """A pooler reads one row per sentence (batch, hidden): there is no token axis to mask."""
    mask = np.array([[True, True, False], [True, False, False]])
    per_token, per_sentence = np.arange(24.0).reshape(2, 3, 4), np.arange(8.0).reshape(2, 4)
    assert token_rows(per_token, mask).tolist() == per_token[[0, 0, 1], [0, 1, 0]].tolist()
    assert token_rows(per_sentence, mask) is per_sentence
