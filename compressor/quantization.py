"""Quantization after pruning, and pruning models whose weights are already int4.

`--quantize int8`: ONNX Runtime's dynamic quantization (weights int8 per output channel, activations quantized at run
time), which needs no calibration and runs on every CPU. The quantizer writes the shapes it inferred into the graph,
and with them ONNX Runtime fuses each residual Add and LayerNormalization into SkipLayerNormalization, a slower kernel
on CPU (`graph_passes.residual_sums`): the residual sums are written as `Sum`, which it leaves alone. Nodes nothing
reads (the old size arithmetic a pruned graph may keep) are dropped: ONNX Runtime would run them.

`--quantize int4`: ONNX Runtime's `MatMulNBitsQuantizer` (weights int4 in blocks of 32 along the input axis,
symmetric, as the ONNX Runtime GenAI model builder writes for CPU), every MatMul with a constant weight becoming a
`MatMulNBits` node with accuracy level 4 (activations quantized to int8 inside the kernel; the report records the
level).

An input that is already int4 (`MatMulNBits`, as the GenAI builder writes it) is scored and refit on its float view
(`graph_passes.quantized_weights.float_view`: the same graph on the dequantized weights), and pruned through the
operator's rule: output channels freely, input channels in whole quantization blocks. `whole_blocks` turns the
scorer's masks into such masks; `back_to_int4` slices the input's own int4 blocks and writes the projections recovery
refit requantized in the input's format (`requantized`). Other quantized inputs (QDQ, int8 operators) are refused:
pruning works on float weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from compressor.errors import CompressorError
from compressor.progress import quiet_loggers
from graph_passes import GraphAnalysis, analyze, apply_masks, replace_initializers
from graph_passes.channel_groups import WITHIN
from graph_passes.dead_nodes import drop_dead_nodes
from graph_passes.quantized_weights import nbits_node
from graph_passes.residual_sums import residual_sums

QUANTIZE_TYPES = ("int8", "int4")
INT4_BLOCK = 32
INT4_ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits: what the GenAI builder uses on CPU
PRUNABLE_QUANTIZED = {"MatMulNBits", "GatherBlockQuantized"}  # quantized operators with pruning rules
# Tensors that ONNX shape inference cannot type (outputs of ORT's contrib ops, as `--optimize` writes them) are float:
# without this the quantizer stops at the first MatMul after a fused Attention.
FLOATS = {"DefaultTensorType": onnx.TensorProto.FLOAT}
QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "QGemm",
    "MatMulNBits",
    "GatherBlockQuantized",
}


class QuantizedInputError(CompressorError):
    """The input model is quantized in a way pruning cannot go through."""


def quantized_node(model: onnx.ModelProto, allowed: frozenset[str] | set[str] = frozenset()) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.op_type not in allowed), None)


def refuse_quantized(model: onnx.ModelProto) -> None:
    """Refuse an input quantized other than by int4 `MatMulNBits` blocks (which prune through their rule)."""
    node = quantized_node(model, PRUNABLE_QUANTIZED)
    if node is not None:
        raise QuantizedInputError(
            f"the model is already quantized ({node.op_type} node {node.name!r}); compress the float model, then "
            "quantize (compress --quantize int8 or int4)"
        )


def quantize(model: onnx.ModelProto, kind: str) -> tuple[onnx.ModelProto, dict]:
    """`model` quantized to `kind` (one of QUANTIZE_TYPES), and the report's description of what was done."""
    if kind == "int8":
        described = {"type": kind, "weights": "int8 per output channel", "activations": "uint8, dynamic"}
        return quantize_int8(model), described
    quantized = quantize_int4(model)
    count = sum(n.op_type == "MatMulNBits" for n in quantized.graph.node)
    described = {
        "type": kind,
        "weights": f"int4 in blocks of {INT4_BLOCK} along the input axis, symmetric (MatMulNBits)",
        "activations": f"accuracy level {INT4_ACCURACY_LEVEL}: int8 inside MatMulNBits",
        "block_size": INT4_BLOCK,
        "symmetric": True,
        "accuracy_level": INT4_ACCURACY_LEVEL,
        "matmul_nbits_nodes": count,
    }
    return quantized, described


def quantize_int8(model: onnx.ModelProto, per_channel: bool = True) -> onnx.ModelProto:
    """Dynamic int8 quantization of every MatMul and Gemm weight (per output channel unless `per_channel` is False),
    nodes nothing reads dropped, residual sums before a LayerNormalization kept unfused (module docstring)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    node = quantized_node(model)
    if node is not None:
        raise QuantizedInputError(
            f"the model is already quantized ({node.op_type} node {node.name!r}) and int8 needs float weights: "
            "compress the float model, then quantize it once"
        )
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(model, str(source))
        with quiet_loggers(None):
            quantize_dynamic(
                str(source), str(target), per_channel=per_channel, weight_type=QuantType.QInt8, extra_options=FLOATS
            )
        quantized = onnx.load(str(target))
    drop_dead_nodes(quantized)
    residual_sums(quantized)
    return quantized


def quantize_int4(
    model: onnx.ModelProto, block: int = INT4_BLOCK, symmetric: bool = True, accuracy_level: int = INT4_ACCURACY_LEVEL
) -> onnx.ModelProto:
    """Every MatMul with a constant 2-D weight as MatMulNBits (int4 blocks along K); a copy, `model` is unchanged."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    copy = onnx.ModelProto.FromString(model.SerializeToString())
    with quiet_loggers(None):
        quantizer = MatMulNBitsQuantizer(
            copy, bits=4, block_size=block, is_symmetric=symmetric, accuracy_level=accuracy_level
        )
        quantizer.process()
    return quantizer.model.model


# --- int4 inputs: masks in whole blocks, weights as float and back ------------------------------------------------


def whole_blocks(source: onnx.ModelProto, analysis: GraphAnalysis, masks: dict[str, np.ndarray]) -> dict:
    """Masks that keep or drop each input block of `source`'s MatMulNBits whole (`analysis` is of its float view).
    Where a block holds several units (FFN neurons: 32 to a block), the blocks are ranked by how many of their units
    the scorer kept, and as many are kept as the kept units fill (at least one). Units of whole blocks (a KV group
    32 channels wide) pass as they are."""
    if not any(n.op_type == "MatMulNBits" for n in source.graph.node):
        return masks
    if source is not analysis.model:
        analysis = analyze(source)
    dims = analysis.dims
    aligned = dict(masks)
    for dim, block, _ in dims.quantized:
        root = dims.find(dim)
        group = next((g for g in analysis.groups if g.dims.get(root, (WITHIN,))[0] != WITHIN), None)
        if group is None or group.name not in aligned or not block:
            continue
        owner = np.empty(dims.size[root], dtype=int)  # the unit of each channel
        for unit in range(group.units):
            owner[group.kept_on(root, np.arange(group.units) == unit)] = unit
        blocks = [np.unique(owner[start : start + block]) for start in range(0, len(owner), block)]
        if all(len(units) == 1 for units in blocks):
            continue  # every block lies inside one unit: any mask keeps whole blocks
        mask = np.asarray(aligned[group.name], dtype=bool)
        votes = np.array([mask[units].sum() for units in blocks])
        count = max(1, int(np.rint(mask.sum() * len(blocks) / group.units)))
        kept = np.zeros(group.units, dtype=bool)
        for chosen in np.argsort(-votes, kind="stable")[:count]:
            kept[blocks[chosen]] = True
        aligned[group.name] = kept
    return aligned


def back_to_int4(
    source: onnx.ModelProto, masks: dict[str, np.ndarray], pruned: onnx.ModelProto, refit: list[str]
) -> tuple[onnx.ModelProto, dict]:
    """The int4 `source` pruned by `masks` through the MatMulNBits rule (its packed blocks sliced, not
    requantized), with the `refit` weights (refit in float on the float view, now in `pruned`) requantized in the
    source's format and their biases copied; and the report's description."""
    result = apply_masks(analyze(source), masks)
    floats = {t.name: t for t in pruned.graph.initializer}
    requantized_weights = []
    for weight in refit:
        node = nbits_node(result, weight)
        if node is None or weight not in floats:
            continue
        arrays = requantized(node, onnx.numpy_helper.to_array(floats[weight]).astype(np.float64))
        bias = (list(node.input) + [""] * 6)[5]
        if bias and bias in floats:
            arrays[bias] = onnx.numpy_helper.to_array(floats[bias])
        replace_initializers(result, arrays)
        requantized_weights.append(weight)
    nodes = [n for n in result.graph.node if n.op_type == "MatMulNBits"]
    described = {
        "type": "int4 (the input's)",
        "weights": "the input's MatMulNBits blocks, sliced in whole blocks",
        "matmul_nbits_nodes": len(nodes),
        "accuracy_level": sorted({a.i for n in nodes for a in n.attribute if a.name == "accuracy_level"}),
        "requantized": requantized_weights,
        "note": "scored and refit in float on the dequantized weights; refit projections requantized in the "
        "input's block format, the others keep their original int4 blocks",
    }
    return result, described


def requantized(node: onnx.NodeProto, matrix: np.ndarray) -> dict[str, np.ndarray]:
    """New weight, scales (and zero points) for `node` applying the (K, N) float `matrix`, quantized as the node is
    (its block size, symmetric without zero points), by ONNX Runtime's own quantizer on a one-node model."""
    attrs = {a.name: a.i for a in node.attribute}
    inputs = list(node.input) + [""] * 6
    k, n = matrix.shape
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "w"], ["y"])],
        "requantize",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, k])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n])],
        [onnx.numpy_helper.from_array(matrix.astype(np.float32), "w")],
    )
    single = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    result = quantize_int4(single, attrs["block_size"], symmetric=not inputs[3])
    (quantized,) = (n for n in result.graph.node if n.op_type == "MatMulNBits")
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in result.graph.initializer}
    new = list(quantized.input) + [""] * 6
    found = {inputs[1]: arrays[new[1]], inputs[2]: arrays[new[2]].reshape(n, -1)}
    if inputs[3]:
        found[inputs[3]] = arrays[new[3]].reshape(n, -1)
    return found
