"""`compress eval` metrics against hand-computed values, through a real ONNX Runtime session of a model that outputs
its input: the scores are chosen by the test, the metrics computed by `evaluate`."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compressor.calibration import from_arrays
from compressor.evaluation import evaluate


def _passthrough(width: int) -> onnx.ModelProto:
    """A model whose output (one row per sample, `width` columns) is its float input."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out"])],
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", width])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _metrics(outputs: np.ndarray, labels: np.ndarray) -> dict:
    model = _passthrough(outputs.shape[1])
    data = from_arrays({"x": outputs.astype(np.float32)}, model, len(outputs))
    return evaluate(model, dataclasses.replace(data, labels=labels), batch_size=4)


def test_two_classes_score_the_f1_of_class_one():
    """predicted 1 1 1 0 1 0 against 1 0 0 1 1 0: class 1 has tp 2, fp 2, fn 1, so F1 = 4/7 (the macro F1 over both
    classes would be 17/35)."""
    predicted, labels = np.array([1, 1, 1, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    metrics = _metrics(np.eye(2)[predicted], labels)
    assert metrics["f1"] == pytest.approx(4 / 7) and metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["n"] == 6 and metrics["pearson"] is None and metrics["spearman"] is None


def test_more_classes_score_the_macro_f1():
    """predicted 0 1 2 2 1 0 against 0 1 1 2 2 2: per class F1 2/3, 1/2, 2/5, so the macro F1 is 47/90."""
    predicted, labels = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 1, 2, 2, 2])
    metrics = _metrics(np.eye(3)[predicted], labels)
    assert metrics["f1"] == pytest.approx(47 / 90) and metrics["accuracy"] == pytest.approx(0.5)


def test_spearman_gives_ties_their_mean_rank():
    """Scores 1 2 2 3 5 rank 0 1.5 1.5 3 4; labels .1 .3 .2 .2 .9 rank 0 3 1.5 1.5 4. Their Pearson is 7.25/9.5 =
    29/38 (ranks that broke the ties in order would give 0.7). The Pearson of the values themselves is 1.78 /
    sqrt(9.2 * 0.412)."""
    scores, labels = np.array([[1.0], [2.0], [2.0], [3.0], [5.0]]), np.array([0.1, 0.3, 0.2, 0.2, 0.9])
    metrics = _metrics(scores, labels)
    assert metrics["spearman"] == pytest.approx(29 / 38)
    assert metrics["pearson"] == pytest.approx(1.78 / np.sqrt(9.2 * 0.412))
    assert metrics["accuracy"] is None and metrics["f1"] is None
