"""The architecture section of BENCHMARKS.md: what it measures on one exported model, and the row it renders."""

from __future__ import annotations

import onnx

from bench.architecture_table import _groups, _runs, architecture_markdown


def test_groups_and_reach_of_a_bert_export(export_cache):
    found = _groups(export_cache("bert", "classifier", "optimum-opset17")[1])
    assert found["groups"] == {"heads": 2, "ffn": 2, "hidden": 1}
    assert 0.9 < found["linear_fraction"] <= 1.0


def test_a_model_that_does_not_run_is_reported_in_one_line(export_cache):
    model = onnx.load(export_cache("bert", "classifier", "optimum-opset17")[1])
    feeds = {"input_ids": [[1]]}
    assert _runs(model, feeds).startswith("needs inputs the calibration does not have")


def test_each_outcome_renders_in_its_cell():
    row = {
        "model_type": "bert",
        "groups": {"heads": 2, "ffn": 2, "hidden": 1},
        "linear_fraction": 1.0,
        "compress": {"outcome": "pruned", "keep": 0.5, "cosine": 0.9991},
        "compress_fused": {"outcome": "refused", "reason": "no prunable channel group"},
        "onnxsim": {"outcome": "ran", "removed": 0.0},
        "onnxsim_fused": {"outcome": "broken", "removed": 0.25, "reason": "Fail: shape | mismatch"},
    }
    lines = architecture_markdown([row])
    assert (
        "| bert | 2 / 2 / 1 | 100% | kept 0.50, cosine 0.999 | refused: no prunable channel group | removed 0%, runs "
        "| removed 25%, does not run (Fail: shape / mismatch) |"
    ) in lines
