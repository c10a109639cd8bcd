"""What capture holds: runs no larger than `RUN_BYTES` returns, no products of the hidden stream with the units
unless they are scored, no decoder logits, and moments past one pass's share in files (models built with numpy by
`bench.large_models`)."""

from __future__ import annotations

import gc
from dataclasses import fields

import numpy as np
import pytest

from bench.large_models import DecoderShape, Shape, build, build_decoder
from bench.workload import feeds
from compressor import capture as capture_module
from compressor.calibration import from_arrays
from compressor.capture import (
    StoredMoments,
    capture,
    capture_names,
    capture_passes,
    capture_session,
    layered,
    plan_capture,
    run_size,
)
from compressor.pipeline import compress
from compressor.scoring import choose_masks
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


def test_moments_past_one_pass_are_accumulated_layer_group_by_group_into_files_and_read_back_equal(
    encoder, monkeypatch, tmp_path
):
    """Each pass runs the same samples in the same runs through its own layers alone, fed with what the pass below
    computed, and accumulates their moments, kept in files in the given folder until the statistics are released:
    every product equals the one-pass capture's (to float32 rounding: the truncated graphs are optimised apart), and
    scoring chooses the same units."""
    analysis, data = encoder
    whole = capture(analysis, data, list(range(SAMPLES)), batch_size=5)
    monkeypatch.setattr(capture_module, "MOMENTS_BYTES", 1)
    monkeypatch.setattr(capture_module, "weight_bytes", lambda model: 1)
    assert capture_passes(analysis) == [[0], [1]]
    sessions = []
    opened = capture_module.cpu_session
    monkeypatch.setattr(capture_module, "cpu_session", lambda model: sessions.append(model) or opened(model))
    seen = []
    parts = capture(analysis, data, list(range(SAMPLES)), 5, seen.append, folder=tmp_path)
    assert seen == [5, 5, 2] * 2
    weights = [{t.name for t in model.graph.initializer if len(t.dims) == 2} for model in sessions]
    assert len(weights) == 2 and not weights[0] & weights[1]  # each pass holds its own layers' weights only
    assert all(any(f"layer.{layer}." in name for name in found) for layer, found in enumerate(weights))
    assert not any("layer.1." in name for name in weights[0]) and not any("layer.0." in name for name in weights[1])
    assert isinstance(parts.layers, StoredMoments) and len(parts.layers) == 2
    assert len(list(tmp_path.glob("mi-compressor-moments-*/*.npz"))) == 4
    assert parts.readers.keys() == whole.readers.keys()
    for mine, theirs in zip([*parts.layers, *parts.hidden], whole.layers + whole.hidden, strict=True):
        assert mine.count == theirs.count
        for field_ in fields(theirs):
            a, b = getattr(mine, field_.name), getattr(theirs, field_.name)
            if isinstance(b, type):
                assert a is b
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=field_.name)
    for name, sums in whole.readers.items():
        np.testing.assert_allclose(parts.readers[name].squares, sums.squares, rtol=1e-5)
    counts = {g.name: g.units // 2 for g in analysis.groups if g.kind in ("heads", "ffn")}
    chosen, expected = (choose_masks("mi", analysis, counts, stats) for stats in (parts, whole))
    assert all(np.array_equal(chosen[name], expected[name]) for name in expected)
    del parts
    gc.collect()
    assert not list(tmp_path.iterdir())


def test_a_decoder_captured_a_layer_at_a_time_matches_one_pass(tmp_path, monkeypatch):
    """A pre-norm decoder's layers read more than their input (the residual stream, rotary tables, the attention
    bias), and its FFN up projections read a norm's output inside the layer: all of them reach the right pass."""
    shape = DecoderShape(layers=3, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=60, positions=32)
    analysis = analyze(load_model(build_decoder(shape, tmp_path / "model.onnx"), referenced=True))
    mask = (np.arange(12) < np.array([12, 3, 7, 12, 5, 9, 12, 2])[:, None]).astype(np.int64)
    data = from_arrays(
        {"input_ids": feeds(analysis.model, 8, 12)["input_ids"], "attention_mask": mask}, analysis.model, 8
    )
    whole = capture(analysis, data, list(range(8)), batch_size=3)
    monkeypatch.setattr(capture_module, "MOMENTS_BYTES", 1)
    monkeypatch.setattr(capture_module, "weight_bytes", lambda model: 1)
    assert capture_passes(analysis) == [[0], [1], [2]]
    parts = capture(analysis, data, list(range(8)), batch_size=3)
    assert len(whole.readers) == 4 and parts.readers.keys() == whole.readers.keys()  # FFN up in each layer, lm_head
    for mine, theirs in zip([*parts.layers, *parts.hidden], whole.layers + whole.hidden, strict=True):
        np.testing.assert_allclose(mine.covariance(), theirs.covariance(), rtol=1e-4, atol=1e-6)
    for name, sums in whole.readers.items():
        np.testing.assert_allclose(parts.readers[name].squares, sums.squares, rtol=1e-5)


def test_outputs_computed_a_group_of_layers_at_a_time_equal_the_whole_model_s(tmp_path, monkeypatch):
    """`layered` gives each run's logits as a session of the whole model does, each group's session holding its
    own layers' weights only; and `compress` on such a model reports the fidelity it reports from one session."""
    shape = DecoderShape(layers=3, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=60, positions=32)
    path = build_decoder(shape, tmp_path / "model.onnx")
    analysis = analyze(load_model(path, referenced=True))
    runs = [feeds(analysis.model, 4, 12), feeds(analysis.model, 3, 5)]
    session = capture_session(analysis.model, [])
    monkeypatch.setattr(capture_module, "MOMENTS_BYTES", 1)
    monkeypatch.setattr(capture_module, "weight_bytes", lambda model: 1)
    sessions = []
    opened = capture_module.cpu_session
    monkeypatch.setattr(capture_module, "cpu_session", lambda model: sessions.append(model) or opened(model))
    found = list(layered(analysis, ["logits"], runs))
    assert [f for f, _ in found] == runs and len(sessions) == 3
    for model in sessions:
        assert sum(t.name.endswith("q_proj.weight") for t in model.graph.initializer) == 1
    for run, (_, values) in zip(runs, found):
        np.testing.assert_allclose(values["logits"], session.run(["logits"], run)[0], rtol=1e-5, atol=1e-5)
    (tmp_path / "layered").mkdir()
    layered_report = compress(path, keep=0.5, samples=40, max_length=12, workspace=tmp_path / "layered").report
    monkeypatch.undo()
    whole_report = compress(path, keep=0.5, samples=40, max_length=12).report
    assert layered_report["fidelity"]["samples"] == whole_report["fidelity"]["samples"] == 16
    assert layered_report["fidelity"]["mean_cosine"] == pytest.approx(whole_report["fidelity"]["mean_cosine"], rel=1e-4)
    for kind in ("sliced", "refit"):
        assert layered_report["recovery"]["output_error"][kind] == pytest.approx(
            whole_report["recovery"]["output_error"][kind], rel=1e-3
        )
