"""Apply unit masks to channel groups: slice every member, rewrite the constants that spell sizes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from graph_passes.channel_groups import WITHIN, ChannelGroup, GraphAnalysis
from graph_passes.errors import MaskError, UnsupportedGraphError
from graph_passes.external_data import DataFile, replacement, tensor_array
from graph_passes.model_io import drop_unread_initializers, share_equal_initializers


def apply_masks(
    analysis: GraphAnalysis,
    masks: Mapping[str, np.ndarray],
    allow_interface_change: bool = False,
    data: DataFile | None = None,
) -> onnx.ModelProto:
    """Return a smaller dense model in which each named group keeps only the units its mask keeps.

    `masks` maps a group name (`heads[0]`, `ffn[3]`, `hidden`) to a boolean array with one entry per unit.
    Groups that reach a graph input or output change the model's interface and need `allow_interface_change`.
    With `data`, a sliced tensor whose original lies in a file is written there (and referred to), not held in
    memory; the tensors left whole are referred to where they are.
    """
    plan = _index_plan(analysis, masks, allow_interface_change)
    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    if plan:
        _slice_initializers(model, analysis, plan, data)
        _rewrite_divisors(model, analysis, plan)  # by node index: before any pass inserts nodes
        _rewrite_shape_targets(model, analysis, plan)
        _rewrite_head_counts(model, analysis, plan)
        _rewrite_split_sizes(model, analysis, plan)
        _slice_quantized_blocks(model, analysis, plan)
        _resize_interface(model, analysis, plan)
    del model.graph.value_info[:]
    drop_unread_initializers(model.graph)
    share_equal_initializers(model, max_rank=1)  # a matrix keeps its name: recovery refits it by name
    return model


def kept_along(analysis: GraphAnalysis, masks: Mapping[str, np.ndarray], tensor: str, axis: int) -> np.ndarray:
    """The indices of `tensor`'s `axis` (in the unpruned model) that `apply_masks(analysis, masks)` keeps."""
    plan = _index_plan(analysis, masks, allow_interface_change=True)
    kept = _axis_plan(analysis, plan, tensor, axis + 1).get(axis)
    return np.arange(analysis.values[tensor].shape[axis]) if kept is None else kept


def _index_plan(
    analysis: GraphAnalysis, masks: Mapping[str, np.ndarray], allow_interface_change: bool
) -> dict[int, np.ndarray]:
    """Kept indices per dimension class, for every group whose mask drops something."""
    plan: dict[int, np.ndarray] = {}
    owner: dict[int, str] = {}
    for name, raw in masks.items():
        group = _find_group(analysis, name)
        mask = _check_mask(group, raw)
        if mask.all():
            continue
        if group.blockers:
            raise UnsupportedGraphError(f"cannot prune {group.name}: {group.blockers[0].describe()}")
        if group.interface and not allow_interface_change:
            raise UnsupportedGraphError(
                f"cannot prune {group.name}: it reaches model input/output {group.interface[0]!r} and would change "
                "the model's interface; keep it whole"
            )
        for dim, (view, _) in group.dims.items():
            if view != WITHIN:
                plan[dim] = group.kept_on(dim, mask)
                owner[dim] = group.name
    _check_whole_blocks(analysis, plan, owner)
    return plan


def _check_whole_blocks(analysis: GraphAnalysis, plan: dict[int, np.ndarray], owner: dict[int, str]) -> None:
    """MatMulNBits' input channels go in quantization blocks: a mask keeps or drops each block whole."""
    dims = analysis.dims
    for dim, block, node in dims.quantized:
        kept = plan.get(dims.find(dim))
        if kept is None:
            continue
        size = dims.size[dims.find(dim)]
        counts = np.bincount(kept // block, minlength=-(-size // block))
        full = np.minimum(block, size - block * np.arange(len(counts)))
        if np.any((counts != 0) & (counts != full)):
            raise UnsupportedGraphError(
                f"cannot prune {owner[dims.find(dim)]}: MatMulNBits node {node!r}: input channels are quantized in "
                f"blocks of {block}; the mask keeps part of a block (keep or drop {block} channels at a time)"
            )


def _find_group(analysis: GraphAnalysis, name: str) -> ChannelGroup:
    try:
        return analysis.group(name)
    except KeyError as exc:
        raise MaskError(exc.args[0]) from exc


def _check_mask(group: ChannelGroup, raw: np.ndarray) -> np.ndarray:
    mask = np.asarray(raw)
    if mask.ndim != 1 or mask.shape[0] != group.units:
        raise MaskError(f"mask for {group.name} has shape {mask.shape}; the group has {group.units} units")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise MaskError(f"mask for {group.name} must be boolean (or 0/1)")
        mask = mask.astype(bool)
    if not mask.any():
        raise MaskError(f"mask for {group.name} keeps no unit; keep at least one")
    return mask


def _axis_plan(analysis: GraphAnalysis, plan: dict[int, np.ndarray], tensor: str, rank: int) -> dict[int, np.ndarray]:
    dims = analysis.dims
    found = {}
    for axis in range(rank):
        dim = dims.axes.get((tensor, axis))
        if dim is not None and dims.find(dim) in plan:
            found[axis] = plan[dims.find(dim)]
    return found


def _slice_initializers(
    model: onnx.ModelProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray], data: DataFile | None
) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        cuts = _axis_plan(analysis, plan, tensor.name, len(tensor.dims))
        if not cuts:
            continue
        array = tensor_array(tensor)
        for axis, kept in cuts.items():
            array = np.take(array, kept, axis=axis)
        model.graph.initializer[index].CopyFrom(replacement(tensor, array, data))


def _rewrite_shape_targets(model: onnx.ModelProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray]) -> None:
    """Give each Reshape or Expand whose target spells a pruned size its own target with the new size.

    A static target becomes a new initializer. A target computed at run time by a Concat whose changed entries are
    constants gets its own Concat with new constants (the form ONNX Runtime's transformer fusion reads head counts
    from); any other computed Reshape target is patched with a Where node. Shape constants shared between layers
    with different head counts, or between roles (the dynamo exporter writes one `[2]` for an Unsqueeze axis, a KV
    head count and a repeat count), never interfere. Entries that follow the new sizes by themselves are left alone:
    a Reshape's -1 (inferred) and 0 (copied from the input), an Expand's 1 (the input's size) and its entries
    computed at run time (read from the shapes they follow).
    """
    created: dict[tuple[str, bytes], str] = {}
    producers = {output: node for node in model.graph.node for output in node.output}
    new_nodes = []
    for node in model.graph.node:
        if node.op_type in ("Reshape", "Expand"):
            changes = _target_changes(analysis, plan, node, producers.get(node.input[1]))
            if changes:
                concat = _concat_inputs(analysis, producers.get(node.input[1]), changes)
                node.input[1] = (
                    _patched_concat(model, analysis, producers[node.input[1]], concat, created, new_nodes)
                    if concat
                    else _patched_target(model, analysis, node, changes, created, new_nodes)
                )
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)


def _target_changes(
    analysis: GraphAnalysis, plan: dict[int, np.ndarray], node: onnx.NodeProto, producer: onnx.NodeProto | None
) -> dict[int, int]:
    """Entry of the target -> the kept size it must spell (an Expand's target may be shorter than its output)."""
    out = node.output[0]
    target = analysis.values[node.input[1]]
    rank = len(analysis.values[out].shape)
    offset = rank - len(target)
    cuts = _axis_plan(analysis, plan, out, rank)
    changes = {axis - offset: len(kept) for axis, kept in cuts.items() if axis >= offset}
    if node.op_type == "Reshape":
        return {entry: size for entry, size in changes.items() if target[entry] not in (-1, 0)}
    constant = _constant_entries(analysis, node.input[1], producer)
    return {entry: size for entry, size in changes.items() if target[entry] != 1 and entry in constant}


def _constant_entries(analysis: GraphAnalysis, target: str, producer: onnx.NodeProto | None) -> set[int]:
    """The entries of a shape vector that are constants: all of a static one, those of a Concat's static pieces."""
    if target in analysis.static:
        return set(range(len(analysis.values[target])))
    if producer is None or producer.op_type != "Concat":
        return set()
    found, offset = set(), 0
    for name in producer.input:
        size = analysis.values[name].size
        if name in analysis.static:
            found.update(range(offset, offset + size))
        offset += size
    return found


def _concat_inputs(
    analysis: GraphAnalysis, producer: onnx.NodeProto | None, changes: dict[int, int]
) -> dict[int, np.ndarray] | None:
    """For a target made by Concat of 1-D pieces: the new value of each piece that holds a changed entry, when
    every such piece is a constant; None otherwise."""
    if producer is None or producer.op_type != "Concat":
        return None
    pieces: dict[int, np.ndarray] = {}
    offset = 0
    for index, name in enumerate(producer.input):
        value = analysis.values[name]
        if value.ndim != 1:
            return None
        for axis, size in changes.items():
            if offset <= axis < offset + len(value):
                if name not in analysis.static:
                    return None
                pieces.setdefault(index, value.copy())[axis - offset] = size
        offset += len(value)
    return pieces


def _patched_concat(
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    producer: onnx.NodeProto,
    pieces: dict[int, np.ndarray],
    created: dict[tuple[str, bytes], str],
    new_nodes: list[onnx.NodeProto],
) -> str:
    source = producer.output[0]
    key = (source, b"".join(pieces[i].tobytes() for i in sorted(pieces)) + bytes(sorted(pieces)))
    if key in created:
        return created[key]
    name = f"{source}__pruned{len(created)}"
    inputs = list(producer.input)
    for index, value in pieces.items():
        inputs[index] = f"{name}_piece{index}"
        model.graph.initializer.append(numpy_helper.from_array(value, inputs[index]))
    concat = onnx.helper.make_node("Concat", inputs, [name], name=f"{name}_Concat", axis=0)
    new_nodes.append(concat)
    created[key] = name
    return name


def _patched_target(
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    node: onnx.NodeProto,
    changes: dict[int, int],
    created: dict[tuple[str, bytes], str],
    new_nodes: list[onnx.NodeProto],
) -> str:
    source = node.input[1]
    values = analysis.values[source].copy()
    for axis, size in changes.items():
        values[axis] = size
    key = (source, values.tobytes())
    if key in created:
        return created[key]
    name = f"{source}__pruned{len(created)}"
    if source in analysis.static:
        model.graph.initializer.append(numpy_helper.from_array(values, name))
    else:
        select = np.zeros(values.shape, dtype=bool)
        select[list(changes)] = True
        model.graph.initializer.append(numpy_helper.from_array(select, f"{name}_select"))
        model.graph.initializer.append(numpy_helper.from_array(values, f"{name}_sizes"))
        new_nodes.append(
            onnx.helper.make_node("Where", [f"{name}_select", f"{name}_sizes", source], [name], name=f"{name}_Where")
        )
    created[key] = name
    return name


def _rewrite_head_counts(model: onnx.ModelProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray]) -> None:
    """Fused attention nodes spell their head count (and unequal Q, K, V sizes) in attributes."""
    dims = analysis.dims
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            _rewrite_gqa_heads(node, analysis, plan)
        if node.op_type not in ("Attention", "MultiHeadAttention", "RotaryEmbedding"):
            continue
        if len(analysis.values[node.output[0]].shape) != 3:
            continue  # (B, heads, S, head size): no head count to spell
        factors = dims.factorization(dims.axes[(node.output[0], 2)])
        if factors is None or factors[0] not in plan:
            continue
        for attribute in node.attribute:
            if attribute.name == "num_heads":
                old, attribute.i = attribute.i, len(plan[factors[0]])
        for attribute in node.attribute:
            if attribute.name == "qkv_hidden_sizes":
                attribute.ints[:] = [size // old * len(plan[factors[0]]) for size in attribute.ints]


def _rewrite_gqa_heads(node: onnx.NodeProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray]) -> None:
    """GroupQueryAttention spells its KV head count and its query head count (a whole multiple of it)."""
    dims = analysis.dims
    cache = next((name for name in list(node.input)[3:5] + list(node.output)[1:3] if name), None)
    if cache:
        groups = dims.find(dims.axes[(cache, 1)])
    else:  # output (B, S, heads x head_size), heads = (KV groups, repeat)
        heads = dims.factorization(dims.axes[(node.output[0], 2)])
        groups = (dims.factorization(heads[0]) or heads)[0] if heads else None
    if groups not in plan:
        return
    attributes = {a.name: a for a in node.attribute}
    kept = len(plan[groups])
    repeat = attributes["num_heads"].i // attributes["kv_num_heads"].i
    attributes["kv_num_heads"].i = kept
    attributes["num_heads"].i = kept * repeat


def _slice_quantized_blocks(model: onnx.ModelProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray]) -> None:
    """MatMulNBits: rows N were sliced with every initializer (B, scales, zero points, bias); here the attribute N
    follows, and a pruned input K drops whole blocks from B, the scales and the zero points (4-bit zero points are
    packed two blocks a byte) and sets K."""
    dims = analysis.dims
    initializers = {t.name: i for i, t in enumerate(model.graph.initializer)}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attributes = {a.name: a for a in node.attribute}
        a, y = node.input[0], node.output[0]
        rows = plan.get(dims.find(dims.axes[(y, analysis.values[y].ndim - 1)]))
        if rows is not None:
            attributes["N"].i = len(rows)
        kept = plan.get(dims.find(dims.axes[(a, analysis.values[a].ndim - 1)]))
        if kept is None:
            continue
        blocks = np.unique(kept // attributes["block_size"].i)
        bits = attributes["bits"].i if "bits" in attributes else 4
        attributes["K"].i = len(kept)
        inputs = list(node.input) + [""] * 4
        for name in inputs[1:4]:
            if not name:
                continue
            index = initializers[name]
            array = tensor_array(model.graph.initializer[index])
            if name == inputs[3] and array.dtype == np.uint8 and bits < 8:
                array = _repacked(array, blocks, bits)
            else:
                array = np.take(array, blocks, axis=1)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))


def _repacked(packed: np.ndarray, blocks: np.ndarray, bits: int) -> np.ndarray:
    """Zero points packed `8 // bits` blocks a byte (low bits first), keeping only `blocks`."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = ((packed[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(packed.shape[0], -1)[:, blocks]
    pad = -values.shape[1] % per_byte
    values = np.pad(values, ((0, 0), (0, pad))).reshape(values.shape[0], -1, per_byte)
    return (values << shifts).sum(axis=2).astype(np.uint8)


def _rewrite_split_sizes(model: onnx.ModelProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray]) -> None:
    """A Split with constant sizes that cuts a pruned axis into sections gets its own sizes: each part's kept count."""
    for node in model.graph.node:
        if node.op_type != "Split" or len(node.input) < 2 or node.input[1] not in analysis.static:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % analysis.values[node.input[0]].ndim
        cuts = [_axis_plan(analysis, plan, out, axis + 1).get(axis) for out in node.output]
        if all(kept is None for kept in cuts):
            continue
        sizes = [
            analysis.values[out].shape[axis] if kept is None else len(kept) for out, kept in zip(node.output, cuts)
        ]
        name = f"{node.input[1]}__pruned_{node.name or node.output[0]}"
        model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
        node.input[1] = name


def _rewrite_divisors(model: onnx.ModelProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray]) -> None:
    """A Div or Mul of a run-time size by a constant that spells a pruned factor (`batch x heads // heads`,
    `heads x batch`) gets its own constant: the factor's kept size."""
    dims = analysis.dims
    for index, slot, dim in dims.spelled:
        kept = plan.get(dims.find(dim))
        if kept is None:
            continue
        node = model.graph.node[index]
        old = analysis.values[node.input[slot]]
        name = f"{node.input[slot]}__pruned_{node.name or node.output[0]}"
        model.graph.initializer.append(numpy_helper.from_array(np.full_like(old, len(kept)), name))
        node.input[slot] = name


def _resize_interface(model: onnx.ModelProto, analysis: GraphAnalysis, plan: dict[int, np.ndarray]) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis, kept in _axis_plan(analysis, plan, value.name, len(dims)).items():
            if dims[axis].HasField("dim_value"):
                dims[axis].dim_value = len(kept)
