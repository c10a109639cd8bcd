"""Sizes computed at run time: a Tile whose repeat count is (batch x heads) // heads, as DeBERTa tiles its relative
position projections, prunes with the heads (the divisor is rewritten); a repeat count the analysis cannot follow
keeps the heads whole, naming the Tile."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graph_passes import analyze, apply_masks

HEADS, WIDTH, POSITIONS = 2, 4, 5
HIDDEN = HEADS * WIDTH


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"Wq": (HIDDEN, HIDDEN), "Wp": (HIDDEN, HIDDEN), "Wo": (HIDDEN, HIDDEN), "R": (POSITIONS, HIDDEN)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def const(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def tiled_positions_model(divide_by_a_shape: bool = False) -> onnx.ModelProto:
    """x (B, S, 8) -> queries (B x heads, S, 4); positions R Wp as (heads, 5, 4), tiled to (B x heads, 5, 4);
    y = (softmax(q p^T) p) merged back to (B, S, 8), then Wo. The repeat count is Shape(q)[0] // 2, or
    Shape(q)[0] // Shape(q before merging)[2] (right at run time too, but not a form the analysis follows)."""
    shape_of = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "one"], ["seq"], axis=0),
        helper.make_node("Unsqueeze", ["seq", "axis0"], ["seq1"]),
    ]
    queries = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"]),
        helper.make_node("Reshape", ["q", "split_heads"], ["q4"]),
        helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Concat", ["minus_one", "seq1", "width"], ["merged_shape"], axis=0),
        helper.make_node("Reshape", ["qt", "merged_shape"], ["q3"]),
    ]
    positions = [
        helper.make_node("MatMul", ["R", "Wp"], ["p"]),
        helper.make_node("Reshape", ["p", "position_heads"], ["p3"]),
        helper.make_node("Transpose", ["p3"], ["ph"], perm=[1, 0, 2]),
    ]
    count = [
        helper.make_node("Shape", ["q3"], ["q3_shape"]),
        helper.make_node("Gather", ["q3_shape", "zero"], ["batch_heads"], axis=0),
        helper.make_node("Shape", ["q4"], ["q4_shape"]),
        helper.make_node("Gather", ["q4_shape", "two"], ["heads_count"], axis=0),
        helper.make_node("Div", ["batch_heads", "heads_count" if divide_by_a_shape else "heads"], ["batch"]),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "one1", "one1"], ["repeats"], axis=0),
    ]
    attention = [
        helper.make_node("Tile", ["ph", "repeats"], ["pt"]),
        helper.make_node("Transpose", ["pt"], ["ptt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q3", "ptt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "pt"], ["context"]),
        helper.make_node("Concat", ["minus_one", "heads1", "seq1", "width"], ["unmerged_shape"], axis=0),
        helper.make_node("Reshape", ["context", "unmerged_shape"], ["c4"]),
        helper.make_node("Transpose", ["c4"], ["ct"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ct", "join_heads"], ["c"]),
        helper.make_node("MatMul", ["c", "Wo"], ["y"]),
    ]
    constants = [
        const("zero", 0),
        const("one", 1),
        const("two", 2),
        const("axis0", [0]),
        const("one1", [1]),
        const("minus_one", [-1]),
        const("width", [WIDTH]),
        const("heads", HEADS),
        const("heads1", [HEADS]),
        const("split_heads", [0, 0, HEADS, WIDTH]),
        const("position_heads", [POSITIONS, HEADS, WIDTH]),
        const("join_heads", [0, 0, HIDDEN]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])]
    graph = helper.make_graph(
        shape_of + queries + positions + count + attention,
        "tiled_positions",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        constants + [numpy_helper.from_array(v, k) for k, v in weights().items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reference(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The same computation in numpy with only the kept heads."""
    w = weights()
    columns = (kept[:, None] * WIDTH + np.arange(WIDTH)).reshape(-1)
    q = (x @ w["Wq"][:, columns]).reshape(x.shape[0], x.shape[1], len(kept), WIDTH).transpose(0, 2, 1, 3)
    p = (w["R"] @ w["Wp"][:, columns]).reshape(POSITIONS, len(kept), WIDTH).transpose(1, 0, 2)
    scores = q @ p[None].transpose(0, 1, 3, 2)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ p[None]).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    return context @ w["Wo"][columns]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_tile_repeated_batch_x_heads_over_heads_times_prunes_with_the_heads():
    analysis = analyze(tiled_positions_model())
    (group,) = analysis.by_kind("heads")
    assert group.prunable and {"Wq", "Wp", "Wo"} <= {m.tensor for m in group.params}
    pruned = apply_masks(analysis, {group.name: np.array([False, True])})
    for batch, seq in ((1, 3), (4, 6)):
        x = np.random.default_rng(batch).standard_normal((batch, seq, HIDDEN)).astype(np.float32)
        assert np.abs(run(pruned, x) - reference(x, np.array([1]))).max() <= 1e-5
        assert np.abs(run(tiled_positions_model(), x) - reference(x, np.arange(HEADS))).max() <= 1e-5


def test_a_repeat_count_the_analysis_cannot_follow_keeps_the_heads_whole():
    analysis = analyze(tiled_positions_model(divide_by_a_shape=True))
    (group,) = analysis.by_kind("heads")
    assert not group.prunable
    assert any(b.op_type == "Tile" and "cannot follow" in b.reason for b in group.blockers)


def test_equal_pruned_copies_of_a_weight_keep_their_own_names():
    """Two layers holding equal copies of one layer's weights (as the dynamo exporter writes ALBERT): pruned the same
    way, each copy keeps its name, since recovery refits weights by name."""
    rng = np.random.default_rng(0)
    up, down = rng.standard_normal((HIDDEN, 6)).astype(np.float32), rng.standard_normal((6, HIDDEN)).astype(np.float32)
    nodes, previous = [], "x"
    for layer in (0, 1):
        nodes += [
            helper.make_node("MatMul", [previous, f"up{layer}"], [f"h{layer}"]),
            helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"]),
            helper.make_node("MatMul", [f"r{layer}", f"down{layer}"], [f"d{layer}"]),
            helper.make_node("Add", [previous, f"d{layer}"], [f"y{layer}" if layer == 0 else "y"]),
        ]
        previous = f"y{layer}"
    weights = [
        numpy_helper.from_array(w, f"{name}{layer}") for layer in (0, 1) for name, w in (("up", up), ("down", down))
    ]
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", HIDDEN]) for name in ("x", "y")]
    model = helper.make_model(
        helper.make_graph(nodes, "copies", io[:1], io[1:], weights), opset_imports=[helper.make_opsetid("", 17)]
    )
    analysis = analyze(model)
    mask = np.arange(6) % 2 == 0
    pruned = apply_masks(analysis, {g.name: mask for g in analysis.groups if g.units == 6})
    assert {"up0", "up1", "down0", "down1"} <= {t.name for t in pruned.graph.initializer}
