"""Nodes nothing reads are dropped with the initializers only they read; what an output or a subgraph reads stays."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graph_passes.dead_nodes import drop_dead_nodes


def model_with_dead_size_arithmetic() -> onnx.ModelProto:
    """x -> Reshape to a new size (read), beside the Concat that spelled the old size (read by nothing), and an If whose
    branch reads `scale` from the outer graph."""
    branch = helper.make_graph(
        [helper.make_node("Mul", ["reshaped", "scale"], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, ["batch", 6])],
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch_1d"]),
        helper.make_node("Concat", ["batch_1d", "old_size"], ["old_target"], axis=0),
        helper.make_node("Concat", ["batch_1d", "new_size"], ["new_target"], axis=0),
        helper.make_node("Reshape", ["x", "new_target"], ["reshaped"]),
        helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch),
    ]
    arrays = {
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
        "old_size": np.array([12], np.int64),
        "new_size": np.array([6], np.int64),
        "scale": np.array(2.0, np.float32),
        "flag": np.array(True),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
        [numpy_helper.from_array(a, name) for name, a in arrays.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_unread_concat_and_its_constant_go_and_the_rest_runs_alike():
    model = model_with_dead_size_arithmetic()
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert drop_dead_nodes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "If"]
    assert {t.name for t in model.graph.initializer} == {"zero", "axes", "new_size", "scale", "flag"}
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(before, after) and after.shape == (2, 6)
    assert drop_dead_nodes(model) == 0
