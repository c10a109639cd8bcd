"""Weights quantized to 4 bits in blocks (ONNX Runtime's `MatMulNBits`, as the GenAI model builder writes them): the
float matrix a node applies, and a float view of a model in which such nodes are plain MatMuls. Scoring and recovery
read the view; slicing goes through the quantized model itself (`op_rules.matmul_nbits`)."""

from __future__ import annotations

import numpy as np
import onnx

from graph_passes.errors import UnsupportedGraphError
from graph_passes.external_data import tensor_array


def nbits_node(model: onnx.ModelProto, weight: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == weight), None)


def _attributes(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute}


def dequantized(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> np.ndarray:
    """The (K, N) float weight a 4-bit MatMulNBits node applies: (code - zero point) x scale per block."""
    attrs = _attributes(node)
    if attrs.get("bits", 4) != 4:
        raise UnsupportedGraphError(f"MatMulNBits node {node.name!r} has {attrs['bits']}-bit weights; only 4 is read")
    inputs = list(node.input) + [""] * 6
    packed, scales = values[inputs[1]], values[inputs[2]].astype(np.float64)
    n, blocks = scales.shape[0], packed.shape[1]
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, -1).astype(np.float64)
    zero = np.full((n, blocks, 1), 8.0)
    if inputs[3]:
        points = values[inputs[3]]
        zero = np.stack([points & 0x0F, points >> 4], axis=-1).reshape(n, -1)[:, :blocks, None].astype(np.float64)
    matrix = ((codes - zero) * scales.reshape(n, blocks)[:, :, None]).reshape(n, -1)[:, : attrs["K"]]
    return matrix.T


def float_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each MatMulNBits whose weight nothing else reads as a MatMul on its dequantized (K, N) weight,
    stored under the packed weight's name (then a bias Add): what scoring and recovery read. `model` itself when it
    has no such node."""
    used: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            used[name] = used.get(name, 0) + 1
    chosen = {i for i, n in enumerate(model.graph.node) if n.op_type == "MatMulNBits" and used[n.input[1]] == 1}
    if not chosen:
        return model
    view = onnx.ModelProto.FromString(model.SerializeToString())
    values = {t.name: tensor_array(t) for t in view.graph.initializer}
    weights, dropped, nodes = {}, set(), []
    for index, node in enumerate(view.graph.node):
        if index not in chosen:
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * 6
        weights[inputs[1]] = dequantized(node, values).astype(np.float32)
        dropped.update(name for name in inputs[2:4] if name and used[name] == 1)
        product = f"{node.output[0]}/float_view" if inputs[5] else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [inputs[0], inputs[1]], [product], name=node.name))
        if inputs[5]:
            nodes.append(onnx.helper.make_node("Add", [product, inputs[5]], [node.output[0]], name=f"{node.name}/bias"))
    kept = [t for t in view.graph.initializer if t.name not in dropped]
    del view.graph.initializer[:]
    view.graph.initializer.extend(
        onnx.numpy_helper.from_array(weights[t.name], t.name) if t.name in weights else t for t in kept
    )
    del view.graph.node[:]
    view.graph.node.extend(nodes)
    return view
