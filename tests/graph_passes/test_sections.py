"""A fused projection cut into sections (Split with constant sizes, Slice with computed bounds) prunes each section
with the same units; a cut at constant bounds blocks the group and names the node."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graph_passes import analyze, apply_masks

RNG = np.random.default_rng(0)
W_IN = RNG.standard_normal((8, 12)).astype(np.float32)
W_OUT = RNG.standard_normal((4, 8)).astype(np.float32)


def gated(cut: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """y = (a * b + c) @ W_OUT, where a, b, c are the three sections of x @ W_IN that `cut` makes."""
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["packed"], name="fused"),
        *cut,
        helper.make_node("Mul", ["a", "b"], ["ab"], name="gate"),
        helper.make_node("Add", ["ab", "c"], ["units"], name="sum"),
        helper.make_node("MatMul", ["units", "w_out"], ["y"], name="down"),
    ]
    graph = helper.make_graph(
        nodes,
        "gated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(W_IN, "w_in"), numpy_helper.from_array(W_OUT, "w_out"), *initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def split_model() -> onnx.ModelProto:
    sizes = numpy_helper.from_array(np.array([4, 4, 4], dtype=np.int64), "sizes")
    return gated([helper.make_node("Split", ["packed", "sizes"], ["a", "b", "c"], name="cut", axis=1)], [sizes])


def computed_slices_model() -> onnx.ModelProto:
    """Bounds from the packed width at run time, as exporters write `chunk`: third = width / 3."""
    const = {
        n: numpy_helper.from_array(np.array(v, dtype=np.int64), n)
        for n, v in [("one", [1]), ("three", [3]), ("two", [2]), ("zero", [0])]
    }
    cut = [
        helper.make_node("Shape", ["packed"], ["shape"], start=1),
        helper.make_node("Div", ["shape", "three"], ["third"]),
        helper.make_node("Mul", ["third", "two"], ["two_thirds"]),
        helper.make_node("Slice", ["packed", "zero", "third", "one"], ["a"], name="cut_a"),
        helper.make_node("Slice", ["packed", "third", "two_thirds", "one"], ["b"], name="cut_b"),
        helper.make_node("Slice", ["packed", "two_thirds", "shape", "one"], ["c"], name="cut_c"),
    ]
    return gated(cut, list(const.values()))


def constant_slices_model() -> onnx.ModelProto:
    const = [numpy_helper.from_array(np.array([v], dtype=np.int64), f"at{v}") for v in (0, 1, 4, 8, 12)]
    cut = [
        helper.make_node("Slice", ["packed", f"at{s}", f"at{e}", "at1"], [o], name=f"cut_{o}")
        for o, s, e in (("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    ]
    return gated(cut, const)


def expected(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    a, b, c = (x @ W_IN[:, 4 * k : 4 * k + 4][:, keep] for k in range(3))
    return (a * b + c) @ W_OUT[keep]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_sections_cut_by_split_or_computed_slices_keep_the_same_units():
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    mask = np.array([True, False, True, True])
    for model in (split_model(), computed_slices_model()):
        analysis = analyze(model)
        (group,) = [g for g in analysis.groups if g.prunable]
        assert group.units == 4 and group.writers == ["w_in"] and group.readers == ["w_out"]
        pruned = apply_masks(analysis, {group.name: mask})
        assert np.abs(run(pruned, x) - expected(x, np.flatnonzero(mask))).max() <= 1e-5


def test_constant_slice_bounds_block_the_group_and_name_the_node():
    analysis = analyze(constant_slices_model())
    assert not any(g.prunable for g in analysis.groups if g.units == 4)
    blockers = {b.describe() for g in analysis.groups for b in g.blockers}
    assert any("Slice node 'cut_" in b and "constant bounds" in b for b in blockers)


def test_units_nested_inside_another_groups_axis_are_not_prunable():
    """x @ W (16 columns) reshaped to (2, 2 heads, 4) and summed over the first axis: the heads live inside an axis
    that belongs to the group of that first axis, so a heads mask could not slice W; neither group may be pruned."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["packed"]),
        helper.make_node("Reshape", ["packed", "nested"], ["split"]),
        helper.make_node("ReduceSum", ["split", "axis1"], ["heads"], keepdims=0),
        helper.make_node("Reshape", ["heads", "merged"], ["units"]),
        helper.make_node("MatMul", ["units", "w_out"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w_out"),
        numpy_helper.from_array(np.array([0, 2, 2, 4], dtype=np.int64), "nested"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0, 8], dtype=np.int64), "merged"),
    ]
    graph = helper.make_graph(
        nodes,
        "nested",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializers,
    )
    analysis = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    heads = analysis.by_kind("heads")
    assert heads and not any(g.prunable for g in heads)
    assert any("inside an axis of another group" in b.reason for g in heads for b in g.blockers)
