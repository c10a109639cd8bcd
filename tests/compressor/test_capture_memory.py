"""What capture holds: runs no larger than `RUN_BYTES` returns, no products of the hidden stream with the units
unless they are scored, and no decoder logits (models built with numpy by `bench.large_models`)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.large_models import DecoderShape, Shape, build, build_decoder
from bench.workload import feeds
from compressor import capture as capture_module
from compressor.calibration import from_arrays
from compressor.capture import capture, capture_names, capture_session, plan_capture, run_size
from graph_passes import analyze, load_model

SAMPLES = 12


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = build(
        Shape(layers=2, hidden=32, heads=4, ffn=64, vocab=50, positions=16), tmp_path_factory.mktemp("e") / "m.onnx"
    )
    analysis = analyze(load_model(path, referenced=True))
    return analysis, from_arrays(feeds(analysis.model, SAMPLES, 10), analysis.model, SAMPLES)


class Counted:
    """A session that records how many samples each run takes."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, []

    def run(self, names, batch):
        self.runs.append(len(next(iter(batch.values()))))
        return self.session.run(names, batch)


def test_runs_stay_under_the_bytes_they_may_return_and_the_moments_follow(encoder, monkeypatch):
    analysis, data = encoder
    names = capture_names(plan_capture(analysis))
    whole = capture(analysis, data, list(range(SAMPLES)), batch_size=SAMPLES)
    per_token = sum(analysis.values[n].shape[-1] * 4 for n in names)
    monkeypatch.setattr(capture_module, "RUN_BYTES", per_token * data.max_length * 5)
    assert run_size(analysis, names, data.max_length, SAMPLES) == 5
    session = Counted(capture_session(analysis.model, names))
    parts = capture(analysis, data, list(range(SAMPLES)), batch_size=SAMPLES, session=session)
    assert session.runs == [5, 5, 2]
    for mine, theirs in zip(parts.layers + parts.hidden, whole.layers + whole.hidden, strict=True):
        assert mine.count == theirs.count
        np.testing.assert_allclose(mine.covariance(), theirs.covariance(), rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(capture_module, "RUN_BYTES", 1)
    assert run_size(analysis, names, data.max_length, SAMPLES) == 1


def test_the_stream_products_are_left_out_unless_the_stream_is_scored(encoder):
    analysis, data = encoder
    full = capture(analysis, data, list(range(SAMPLES)), batch_size=SAMPLES)
    lean = capture(analysis, data, list(range(SAMPLES)), batch_size=SAMPLES, stream_cross=False)
    assert all(m.centred_cross.size == 0 and m.partner_dim == 0 for m in lean.hidden)
    assert all(m.centred_cross.size > 0 for m in full.hidden)
    for mine, theirs in zip(lean.layers + lean.hidden, full.layers + full.hidden, strict=True):
        assert np.array_equal(mine.centred_gram, theirs.centred_gram) and np.array_equal(mine.total, theirs.total)


def test_a_decoder_capture_does_not_ask_for_the_logits(tmp_path):
    shape = DecoderShape(layers=2, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=60, positions=32)
    analysis = analyze(load_model(build_decoder(shape, tmp_path / "model.onnx"), referenced=True))
    plan = plan_capture(analysis)
    assert plan.top_hidden is None and plan.output == "logits"
    assert "logits" not in capture_names(plan)
