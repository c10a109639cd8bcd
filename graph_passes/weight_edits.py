"""Edits that keep a graph's structure: cut it down to what some tensors need (and find where to cut it a layer at a
time), find and replace linear weights."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from graph_passes.external_data import DataFile, copy_fields, replacement


def truncated(model: onnx.ModelProto, outputs: list[str], cut: Mapping[str, np.dtype] | None = None) -> onnx.ModelProto:
    """A copy that computes only `outputs` (any tensors of the graph): nodes they do not depend on are dropped, and
    only the initializers the rest reads are copied.

    Tensors named in `cut` (with their element types) become graph inputs: what produced them is not computed,
    their values are fed. The model's own graph inputs stay declared, so the same feeds work for every truncation.
    """
    cut = dict(cut or {})
    producer = {out: node for node in model.graph.node for out in node.output if out}
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and name not in cut:
            stack.extend(i for i in node.input if i)
    result = onnx.ModelProto()
    copy_fields(model, result, skip="graph")  # the graph's parts are taken as needed below
    graph, source = result.graph, model.graph
    graph.name = source.name
    graph.input.extend(source.input)
    graph.node.extend(n for n in source.node if any(o in needed and o not in cut for o in n.output))
    initializers = [t for t in source.initializer if t.name in needed]
    graph.input.extend(
        onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)
        for name, dtype in cut.items()
    )
    graph.initializer.extend(initializers)
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    return result


def layer_cuts(model: onnx.ModelProto, hidden: list[str], read: list[list[str]]) -> list[list[str]]:
    """Per layer, the tensors computed below it that the layer reads (its cut): the outputs of the nodes that lead
    to the layer's input `hidden[i]` which the layer's own nodes need, to compute `read[i]` and the next layer's
    cut. Fed with their values, a truncated model runs that layer only. A pre-norm decoder's layer reads more than
    its normalised input (the residual stream, the attention mask, rotary tables), a fused one the two inputs of a
    skip-add norm: this finds them all from the graph. The first layer's is empty: it runs from the graph inputs."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    cuts: list[list[str]] = [[] for _ in hidden]
    for position in range(len(hidden) - 1, 0, -1):
        below = computed_before(producer, hidden[position])
        wanted = read[position] + (cuts[position + 1] if position + 1 < len(hidden) else [])
        cuts[position] = _reached(producer, wanted, below)
    return cuts


def computed_before(producer: dict[str, onnx.NodeProto], tensor: str) -> set[str]:
    """Every output of every node that `tensor` depends on (or that computes it); `producer`: each tensor's node."""
    nodes, seen, stack = [], set(), [tensor]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if (node := producer.get(name)) is not None:
            nodes.append(node)
            stack.extend(i for i in node.input if i)
    return {out for node in nodes for out in node.output if out}


def _reached(producer: dict[str, onnx.NodeProto], names: list[str], below: set[str]) -> list[str]:
    """The tensors of `below` that computing `names` reads, walking back from them and stopping at `below`."""
    reached, seen, stack = [], set(), list(names)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in below:
            reached.append(name)
        elif (node := producer.get(name)) is not None:
            stack.extend(i for i in node.input if i)
    return sorted(reached)


def initializer_behind(model: onnx.ModelProto, name: str) -> str | None:
    """The initializer that tensor `name` is, or is an Identity copy of (exporters deduplicate that way)."""
    initializers = {t.name for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    while name not in initializers:
        node = producer.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return name


def linear_bias(model: onnx.ModelProto, weight: str) -> str | None:
    """The constant bias added to the output of the first MatMul or Gemm that applies `weight`, if there is one.

    The answer may be an Identity copy of an initializer: `initializer_behind` finds the initializer."""
    biases = linear_biases(model, weight)
    if not biases:
        raise KeyError(f"{weight!r} is applied by no MatMul or Gemm")
    return biases[0]


def linear_biases(model: onnx.ModelProto, weight: str) -> list[str | None]:
    """The constant bias added after each MatMul or Gemm that applies `weight`, in graph order (None where there is
    none): several when layers share the weight (ALBERT), each use with its own bias tensor after `normalize`."""
    initializers = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return [
        _bias_of(model, node, consumers.get(node.output[0], []), initializers)
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] == weight
    ]


def _bias_of(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    consumers: list[onnx.NodeProto],
    initializers: Mapping[str, onnx.TensorProto],
) -> str | None:
    if node.op_type == "Gemm":
        return node.input[2] if len(node.input) > 2 and initializer_behind(model, node.input[2]) else None
    for consumer in consumers:
        if consumer.op_type == "Add":
            other = next((i for i in consumer.input if i != node.output[0]), None)
            source = initializer_behind(model, other) if other else None
            if source is not None and len(initializers[source].dims) == 1:
                return other
    return None


def replace_initializers(
    model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], data: DataFile | None = None
) -> None:
    """Give the initializers behind the named tensors new values (same element type), in place; with `data`, those
    whose old value lies in a file are written there (when large) and referred to, as `apply_masks` does.

    Each must be used by one node only (`normalize` makes it so), or its other users would change too."""
    targets = {}
    for name, value in arrays.items():
        source = initializer_behind(model, name)
        if source is None:
            raise KeyError(f"{name!r} is not an initializer (nor an Identity copy of one)")
        targets[source] = value
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in targets:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            value = np.ascontiguousarray(targets[tensor.name], dtype=dtype)
            model.graph.initializer[index].CopyFrom(replacement(tensor, value, data))
