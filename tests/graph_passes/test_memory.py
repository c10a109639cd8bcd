"""The shape probe's values keep no copy of the model's weights: they are read from the protobuf on lookup."""

import tracemalloc

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graph_passes.shape_probe import CACHED_BYTES, probe_values


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32), "W")  # 1 MiB
    bias = numpy_helper.from_array(rng.standard_normal(512).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_probe_values_hold_no_copy_of_large_weights():
    model = _model()
    tracemalloc.start()
    try:
        values = probe_values(model)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert values is not None
    assert held < 512 * 512 * 4 // 2  # well under the weight's 1 MiB


def test_probe_values_read_every_initializer_and_tensor():
    model = _model()
    values = probe_values(model)
    assert set(values) == {"W", "B", "x", "h", "y"}
    assert len(values) == 5 and "W" in values and "missing" not in values
    for tensor in model.graph.initializer:
        assert np.array_equal(values[tensor.name], numpy_helper.to_array(tensor))
    assert numpy_helper.from_array(values["W"]).ByteSize() > CACHED_BYTES
    np.testing.assert_allclose(values["y"], values["x"] @ values["W"] + values["B"], rtol=1e-5, atol=1e-5)
    values["W"] = np.zeros((2, 2), np.float32)  # a written value replaces the initializer's
    assert values["W"].shape == (2, 2)
    del values["W"]
    assert "W" not in values and len(values) == 4
