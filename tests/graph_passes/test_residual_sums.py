"""Residual sums before a LayerNormalization as `Sum`: same outputs, and ONNX Runtime no longer fuses them into
SkipLayerNormalization when the session starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graph_passes.residual_sums import residual_sums

HIDDEN = 8


def residual_block(shape: list) -> onnx.ModelProto:
    """x @ W + b + skip -> LayerNormalization, then a bias Add that feeds no normalization."""
    rng = np.random.default_rng(0)
    vectors = {name: rng.standard_normal(HIDDEN) for name in ("bias", "gamma", "beta", "after")}
    arrays = {"w": rng.standard_normal((HIDDEN, HIDDEN)), **vectors}
    initializers = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["biased"]),
        helper.make_node("Add", ["biased", "skip"], ["summed"]),
        helper.make_node("LayerNormalization", ["summed", "gamma", "beta"], ["normed"], axis=-1, epsilon=1e-12),
        helper.make_node("Add", ["normed", "after"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in ("x", "skip")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "residual", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session_ops(model: onnx.ModelProto, folder: Path) -> tuple[list[str], np.ndarray]:
    """The operators of the graph ONNX Runtime runs (all optimizations on, CPU), and its output."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {name: rng.standard_normal((2, 3, HIDDEN)).astype(np.float32) for name in ("x", "skip")}
    (output,) = session.run(None, feeds)
    return [n.op_type for n in onnx.load(str(folder / "optimized.onnx")).graph.node], output


def test_the_sum_that_feeds_a_layer_norm_is_rewritten_and_runs_alike(tmp_path):
    model = residual_block(["batch", "sequence", HIDDEN])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert residual_sums(rewritten) == 1
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Add", "Sum", "LayerNormalization", "Add"]
    onnx.checker.check_model(rewritten, full_check=True)
    (_, before), (_, after) = session_ops(model, tmp_path), session_ops(rewritten, tmp_path)
    assert np.allclose(before, after, rtol=0, atol=1e-6)


def test_ort_fuses_the_add_into_skip_layer_norm_but_not_the_sum(tmp_path):
    """With shapes it can match (here fixed ones) ONNX Runtime fuses Add, Add and LayerNormalization."""
    model = residual_block([2, 3, HIDDEN])
    fused_ops, _ = session_ops(model, tmp_path)
    assert "SkipLayerNormalization" in fused_ops and "LayerNormalization" not in fused_ops
    residual_sums(model)
    ops, _ = session_ops(model, tmp_path)
    assert "SkipLayerNormalization" not in ops and {"Sum", "LayerNormalization"} <= set(ops)
