"""`compress --optimize`: ONNX Runtime's fusion on pruned graphs whose layers keep different head counts, its residual
sums kept out of SkipLayerNormalization, shipped only when faster at batch 1 and the calibration batch together, and
not much slower at either."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_models
from onnx import numpy_helper

from compressor import compress, optimization
from compressor.calibration import from_arrays
from compressor.fidelity import session
from compressor.optimization import fuse
from compressor.quantization import quantize_int8
from compressor.timing import Timing
from graph_passes import analyze, apply_masks, load_model


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("skip_layer_norm", [True, False])
def test_pruned_layers_with_different_head_counts_fuse_into_attention(export_cache, arch, skip_layer_norm):
    _, path = export_cache(arch, "classifier", "optimum-opset17")
    analysis = analyze(load_model(path))
    masks = {"heads[0]": np.array([True, False, True, False]), "heads[1]": np.array([False, True, False, False])}
    masks["ffn[1]"] = np.arange(96) % 3 == 0
    pruned = apply_masks(analysis, masks)
    fused = fuse(pruned, skip_layer_norm)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("Attention") == 2
    assert ("SkipLayerNormalization" in ops) == skip_layer_norm and ("Sum" in ops) != skip_layer_norm
    feeds = tiny_models.sample_inputs(arch, 4, 12, seed=2)
    reference, output = (session(m).run(None, feeds)[0] for m in (pruned, fused))
    assert np.allclose(reference, output, atol=1e-4)


def test_the_cpu_fusion_keeps_skip_layer_norm_out_of_the_session_too(export_cache, tmp_path):
    """ONNX Runtime fuses Add and LayerNormalization when a session starts if it can: the Sums keep it from that."""
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(fuse(load_model(path), skip_layer_norm=False).SerializeToString(), options)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "session.onnx")).graph.node}
    assert "SkipLayerNormalization" not in ops and {"Attention", "LayerNormalization", "Sum"} <= ops


def test_optimize_ships_the_fused_model_only_when_it_is_faster(export_cache):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    data = tiny_models.sample_inputs("bert", 64, 12, seed=3)
    result = compress(path, data, keep=0.5, optimize=True)
    found = result.report["optimization"]
    assert found["fused_ops"]["Attention"] == 2 and found["output_difference"] < 1e-3
    assert "SkipLayerNormalization" not in found["fused_ops"]
    fused = {n.op_type for n in result.model.graph.node} >= {"Attention", "Sum"}
    timings = [found["p50_ms"], found["p50_ms_batch_1"]]
    ratios = [t["unfused"] / t["fused"] for t in timings]
    faster = min(ratios) >= 1 / (1 + optimization.SLOWER_LIMIT) and ratios[0] * ratios[1] > 1
    assert found["applied"] == faster == fused
    plain = compress(path, data, keep=0.5)
    assert plain.report["optimization"] is None
    feeds = next(from_arrays(data, result.model, 8).batches(range(8), 8))
    assert np.allclose(session(result.model).run(None, feeds)[0], session(plain.model).run(None, feeds)[0], atol=1e-4)


@pytest.fixture(scope="module")
def pruned_and_fused(export_cache):
    """The tiny BERT with heads pruned, its real fusion, and calibration inputs for it."""
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    analysis = analyze(load_model(path))
    pruned = apply_masks(analysis, {"heads[0]": np.array([True, False, True, False])})
    data = from_arrays(tiny_models.sample_inputs("bert", 16, 12, seed=5), pruned, 16)
    return pruned, fuse(pruned, skip_layer_norm=False), data


def _fusing_into(monkeypatch, fused: onnx.ModelProto) -> None:
    monkeypatch.setattr(optimization, "fuse", lambda model, skip_layer_norm=True: fused)


def _timed_at(monkeypatch, by_batch: dict[int, tuple[float, float]]) -> list:
    """Replace the interleaved timing with fixed run times, (unfused, fused) ms by batch size; returns the batch
    sizes it was asked to time at."""
    timed = []

    def fake(sessions, inputs, batch, warmup, runs):
        assert len(sessions) == 2 and all(len(next(iter(f.values()))) == batch for f in inputs)
        timed.append(batch)
        return [Timing([ms / 1e3] * runs, batch) for ms in by_batch[batch]]

    monkeypatch.setattr(optimization, "interleaved", fake)
    return timed


def _edited(model: onnx.ModelProto, edit) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit(copy)
    return copy


def test_a_fused_model_that_does_not_run_is_not_shipped(pruned_and_fused, monkeypatch):
    pruned, fused, data = pruned_and_fused
    attention = next(i for i, n in enumerate(fused.graph.node) if n.op_type == "Attention")
    _fusing_into(monkeypatch, _edited(fused, lambda m: setattr(m.graph.node[attention], "op_type", "NoSuchOp")))
    shipped, report = optimization.optimize(pruned, data, 8)
    assert shipped is pruned and not report["applied"]
    assert report["reason"].startswith("the fused model does not run: ") and "NoSuchOp" in report["reason"]


def test_nothing_fused_is_not_shipped(pruned_and_fused, monkeypatch):
    pruned, _, data = pruned_and_fused
    _fusing_into(monkeypatch, _edited(pruned, lambda m: None))
    shipped, report = optimization.optimize(pruned, data, 8)
    assert shipped is pruned and not report["applied"] and report["fused_ops"] == {}
    assert report["reason"] == "nothing was fused" and report["output_difference"] == 0


def test_fused_outputs_that_differ_are_not_shipped(pruned_and_fused, monkeypatch):
    """The fused graph with its classifier weight doubled: fusion happened, the outputs moved."""
    pruned, fused, data = pruned_and_fused

    def double_classifier(model: onnx.ModelProto) -> None:
        weight = next(t for t in model.graph.initializer if t.name == "classifier.weight")
        weight.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(weight), weight.name))

    _fusing_into(monkeypatch, _edited(fused, double_classifier))
    timed = _timed_at(monkeypatch, {8: (2.0, 1.0), 1: (2.0, 1.0)})
    shipped, report = optimization.optimize(pruned, data, 8)
    assert shipped is pruned and not report["applied"] and report["fused_ops"]["Attention"] == 2
    assert report["output_difference"] > optimization.TOLERANCE and report["reason"].startswith("fused outputs differ")
    assert not timed and "p50_ms" not in report


@pytest.mark.parametrize(
    ("batch_8_ms", "batch_1_ms", "verdict"),
    [
        (2.5, 0.5, "slower at batch 8"),
        (2.0, 1.0, "not faster"),
        (1.5, 0.5, ""),
        (1.5, 1.2, "slower at batch 1"),
        (2.5, 1.2, "slower at batch 1 and batch 8"),
        (2.08, 0.8, ""),  # 4% slower at batch 8 is within the limit, and 25% faster at batch 1 wins
        (2.08, 1.0, "not faster"),
        (2.0, 1.06, "slower at batch 1"),
    ],
)
def test_the_fused_model_is_shipped_only_when_faster_and_not_much_slower_at_either_batch(
    pruned_and_fused, monkeypatch, batch_8_ms, batch_1_ms, verdict
):
    """Unfused runs take 2.0 ms at batch 8 and 1.0 ms at batch 1."""
    pruned, fused, data = pruned_and_fused
    _fusing_into(monkeypatch, fused)
    timed = _timed_at(monkeypatch, {8: (2.0, batch_8_ms), 1: (1.0, batch_1_ms)})
    shipped, report = optimization.optimize(pruned, data, 8)
    assert timed == [8, 1] and report["output_difference"] <= optimization.TOLERANCE
    assert report["p50_ms"] == {"unfused": 2.0, "fused": batch_8_ms}
    assert report["p50_ms_batch_1"] == {"unfused": 1.0, "fused": batch_1_ms}
    applied = not verdict
    assert report["applied"] is applied and shipped is (fused if applied else pruned)
    refused = f"the fused model is {verdict} on calibration inputs (CPU)"
    assert report["reason"] == ("validated, same outputs, faster" if applied else refused)


def test_at_batch_1_the_fused_model_is_timed_once(pruned_and_fused, monkeypatch):
    pruned, fused, data = pruned_and_fused
    _fusing_into(monkeypatch, fused)
    timed = _timed_at(monkeypatch, {1: (1.0, 1.5)})
    shipped, report = optimization.optimize(pruned, data, 1)
    assert timed == [1] and "p50_ms_batch_1" not in report and shipped is pruned
    assert report["reason"] == "the fused model is slower at batch 1 on calibration inputs (CPU)"


def test_with_quantization_to_follow_the_quantized_forms_are_timed(pruned_and_fused, monkeypatch):
    """`deployed` (what the pipeline does next) is applied to both models before they are timed; the float model
    the choice falls on is what is returned, and its outputs were compared in float."""
    pruned, fused, data = pruned_and_fused
    _fusing_into(monkeypatch, fused)
    timed_sessions = []
    run_session = optimization._timing_session
    monkeypatch.setattr(optimization, "_timing_session", lambda m: timed_sessions.append(m) or run_session(m))
    _timed_at(monkeypatch, {8: (2.0, 1.5), 1: (1.0, 0.5)})
    deployed = []
    shipped, report = optimization.optimize(pruned, data, 8, lambda m: deployed.append(m) or quantize_int8(m))
    assert deployed == [pruned, fused] and shipped is fused and report["applied"]
    assert report["timed_as"] == "quantized" and report["output_difference"] <= optimization.TOLERANCE
    assert [any(n.op_type == "MatMulInteger" for n in m.graph.node) for m in timed_sessions] == [False] * 2 + [True] * 2
