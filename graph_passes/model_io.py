"""Loading ONNX models with clear errors, and the normal form the passes work on."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

from graph_passes.errors import NotOnnxError, UnsupportedGraphError
from graph_passes.external_data import (
    DataFile,
    copy_fields,
    reference_in_place,
    relative_to,
    stays_inline,
    tensor_array,
)


def load_model(path: str | Path, referenced: bool = False) -> onnx.ModelProto:
    """Read an ONNX file and its external data, raising NotOnnxError with the fix when it is not one. With
    `referenced`, weights in external data stay there: the model refers to them (`graph_passes.external_data`, which
    reads them when used), so that they are never held in memory whole; such a model is written with
    `save_with_data`.

    External data must lie in the model's folder (or below it): a reference that leaves it is refused before any
    file is opened."""
    path = Path(path)
    if not path.is_file():
        raise NotOnnxError(f"{path}: no such file; pass the path of an exported .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise NotOnnxError(f"{path}: not an ONNX model ({type(exc).__name__}); export it to ONNX first") from exc
    if not model.graph.node:
        raise NotOnnxError(f"{path}: not an ONNX model (no graph nodes); export it to ONNX first")
    try:
        _decode_text(model)
    except UnicodeError as exc:
        raise NotOnnxError(f"{path}: a damaged ONNX file (a name is not UTF-8 text); export it again") from exc
    for location in external_data_files(model):
        _check_inside(path, location)
    if referenced:
        reference_in_place(model, path.parent)
    elif external_data_files(model):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def save_with_data(model: onnx.ModelProto, path: Path, data_name: str) -> None:
    """Write `model` to `path` with every large tensor in the file `data_name` beside it, at aligned offsets: copied
    a chunk at a time from the data files it refers to, or written from memory. `model` is not changed."""
    data = DataFile(path.parent / data_name)
    tensors = [t if stays_inline(t) else data.store_tensor(t) for t in model.graph.initializer]
    written = onnx.ModelProto()
    copy_fields(model, written, skip="graph")
    copy_fields(model.graph, written.graph, skip="initializer")
    written.graph.initializer.extend(relative_to(tensors, path.parent))
    path.write_bytes(written.SerializeToString())


def _decode_text(message) -> None:
    """Check every text field of a protobuf message and the messages inside it: a damaged name would otherwise
    fail deep inside the analysis or ONNX Runtime."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            for text in [value] if isinstance(value, (str, bytes)) else value:
                _check_utf8(text)
        elif field.type == field.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                _decode_text(item)


def _check_utf8(text: str | bytes) -> None:
    """Protobuf gives damaged text as bytes, or as a str with surrogates that cannot be encoded again."""
    if isinstance(text, bytes):
        raise UnicodeError("a text field holds bytes that are not UTF-8")
    text.encode("utf-8")


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """The locations of the external data files the model's initializers refer to, in order of first use."""
    found = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found += [entry.value for entry in tensor.external_data if entry.key == "location"]
    return list(dict.fromkeys(found))


def _check_inside(path: Path, location: str) -> None:
    folder = path.parent.resolve()
    target = (folder / location).resolve()
    if Path(location).is_absolute() or not target.is_relative_to(folder):
        raise NotOnnxError(
            f"{path}: external data {location!r} lies outside the model's folder; "
            "keep the data file beside the model (onnx.save(..., save_as_external_data=True))"
        )
    if not target.is_file():
        raise NotOnnxError(f"{path}: its external data file {location!r} is missing; copy it beside the model")


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """The form the passes work on: constants as initializers, Identity copies of initializers resolved, and no
    vector or scalar initializer shared between two uses.

    Exporters deduplicate equal constants (all-zero biases of different layers become one tensor, or Identity
    copies of it); a shared tensor would couple unrelated channels, so each use gets its own copy.
    `share_equal_initializers` undoes this on the output. A matrix used by several nodes is a weight the model
    shares (ALBERT's layers): it stays one tensor, so its uses shrink together.
    """
    return _unshare_initializers(_resolve_identity_copies(constants_to_initializers(model)))


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where every tensor-valued Constant node of the main graph is an initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            tensor = _constant_value(node)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return out


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto:
    attr = node.attribute[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    value = onnx.helper.get_attribute_value(attr)
    if attr.name in ("value_float", "value_int"):
        return numpy_helper.from_array(np.array(value, dtype="float32" if attr.name == "value_float" else "int64"))
    if attr.name in ("value_floats", "value_ints"):
        return numpy_helper.from_array(np.array(value, dtype="float32" if attr.name == "value_floats" else "int64"))
    raise UnsupportedGraphError(f"Constant node {node.name!r} holds a {attr.name}; only tensor constants are supported")


def _resolve_identity_copies(model: onnx.ModelProto) -> onnx.ModelProto:
    """Identity nodes that copy an initializer (how exporters write tied or deduplicated parameters): a matrix's
    users read the initializer itself (a shared weight), a smaller tensor's copy becomes an initializer."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {v.name for v in graph.output} | subgraph_inputs(graph)
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        source = rename.get(node.input[0], node.input[0]) if node.input else ""
        if node.op_type != "Identity" or source not in initializers or node.output[0] in outputs:
            kept.append(node)
        elif len(initializers[source].dims) >= 2:
            rename[node.output[0]] = source
        else:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[source])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            initializers[copy.name] = copy
    for node in kept:
        for slot, name in enumerate(node.input):
            if name in rename:
                node.input[slot] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name that a node inside a subgraph (If, Loop, Scan bodies) reads, at any depth."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names.update(name for inner in body.node for name in inner.input)
                names |= subgraph_inputs(body)
    return names


def _unshare_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    initializers = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            if name not in initializers or np.prod(initializers[name].dims) <= 1 or len(initializers[name].dims) > 1:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}__use{len(model.graph.initializer)}"
                model.graph.initializer.append(copy)
                node.input[slot] = copy.name
            seen.add(name)
    return model


def share_equal_initializers(model: onnx.ModelProto, max_rank: int | None = None) -> None:
    """Let equal initializers (same type, shape and bytes) be one tensor again, in place; with `max_rank`, only
    those of at most that rank (what `normalize` unshares), so that every matrix keeps its name. Only tensors that
    share their type and shape with another are read (weights in files one at a time)."""
    graph_io = {v.name for v in list(model.graph.input) + list(model.graph.output)} | subgraph_inputs(model.graph)
    candidates = [
        t for t in model.graph.initializer if t.name not in graph_io and (max_rank is None or len(t.dims) <= max_rank)
    ]
    shapes = Counter((t.data_type, tuple(t.dims)) for t in candidates)
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for tensor in candidates:
        if shapes[(tensor.data_type, tuple(tensor.dims))] < 2:
            continue
        key = (tensor.data_type, tuple(tensor.dims), _digest(tensor_array(tensor)))
        if key in first:
            rename[tensor.name] = first[key]
        else:
            first[key] = tensor.name
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            if name in rename:
                node.input[slot] = rename[name]
    drop_initializers(model.graph, set(rename))


def tensors_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name the graph reads: its nodes' inputs, those of nodes in its subgraphs, and its outputs."""
    return (
        {name for node in graph.node for name in node.input} | subgraph_inputs(graph) | {v.name for v in graph.output}
    )


def drop_unread_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers that nothing reads (`tensors_read`) and that are not graph inputs either."""
    read = tensors_read(graph) | {value.name for value in graph.input}
    drop_initializers(graph, {t.name for t in graph.initializer if t.name not in read})


def drop_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the named initializers, in place and by position: the others are not copied (clearing the list and
    adding back the kept ones copies every weight, 0.04 s per 90 MB each time)."""
    for index in reversed([i for i, tensor in enumerate(graph.initializer) if tensor.name in names]):
        del graph.initializer[index]


def _digest(array: np.ndarray) -> bytes:
    """A hash of the array's bytes, read in place (a memory-mapped weight is not copied)."""
    return hashlib.sha256(array.tobytes() if array.dtype == object else np.ascontiguousarray(array).data).digest()
