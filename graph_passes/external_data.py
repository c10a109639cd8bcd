"""Weights that stay in their files: a model's large initializers as references to a data file, read on demand.

A model read from disk keeps each external tensor as the file reader left it, a reference (location, offset,
length), with the location made absolute (`reference_in_place`), so that the model can be copied, cut and handed to
ONNX Runtime without its weights ever being copied into memory. `tensor_array` reads a tensor's value: a read-only
memory map of its bytes for an external one. New large tensors (sliced or refit weights) are appended to a
`DataFile` of the caller's at aligned offsets and referenced the same way. Files written for others (a graph handed
to ONNX Runtime, a model written out) take relative locations: `relative_to` rewrites them for one folder
(`common_folder` holds them all), and `model_io.save_with_data` copies the referenced bytes into a data file of the
model's own.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import numpy_helper

EXTERNAL = onnx.TensorProto.EXTERNAL
EXTERNAL_THRESHOLD = 1024  # tensors of at least this many bytes go to a data file, as onnx.save does
ALIGNMENT = 2**16  # offsets of tensors this large are multiples of it (a page on every platform); smaller: of 64
COPY_CHUNK = 2**26  # bytes copied at a time between data files
HALF_BYTE = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1}  # two values a byte


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == EXTERNAL


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in model.graph.initializer)


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _set_entry(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    tensor.external_data.add(key=key, value=value)


def location(tensor: onnx.TensorProto) -> Path:
    return Path(_entries(tensor)["location"])


def _span(tensor: onnx.TensorProto) -> tuple[int, int]:
    """(offset, length) of an external tensor's bytes in its file (a missing length: to the end of the file)."""
    entries = _entries(tensor)
    offset = int(entries.get("offset", 0))
    length = int(entries["length"]) if "length" in entries else os.path.getsize(entries["location"]) - offset
    return offset, length


def reference_in_place(model: onnx.ModelProto, folder: Path) -> None:
    """Make the locations of `model`'s external tensors absolute (resolved against `folder`, links followed)."""
    for tensor in model.graph.initializer:
        if is_external(tensor):
            _set_entry(tensor, "location", str((folder / location(tensor)).resolve()))


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The value of an initializer: for an external one, a read-only memory map of its bytes (a copy read from the
    file for types that numpy cannot map, such as packed 4-bit ones); else converted from the protobuf."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(tensor.dims)
    offset, length = _span(tensor)
    if length == math.prod(shape) * dtype.itemsize and length > 0:
        return np.memmap(location(tensor), dtype=dtype, mode="r", offset=offset, shape=shape)
    inline = onnx.TensorProto()
    inline.name, inline.data_type = tensor.name, tensor.data_type
    inline.dims.extend(shape)
    inline.raw_data = _read(tensor)
    return numpy_helper.to_array(inline)


def _read(tensor: onnx.TensorProto) -> bytes:
    offset, length = _span(tensor)
    with open(location(tensor), "rb") as stream:
        stream.seek(offset)
        return stream.read(length)


def nbytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's data, wherever they are."""
    if is_external(tensor):
        return _span(tensor)[1]
    if tensor.data_type == onnx.TensorProto.STRING:
        return tensor.ByteSize()
    count = math.prod(tensor.dims)  # from the shape: reading `raw_data` copies it (0.46 s of minilm-sst2's compress)
    if tensor.data_type in HALF_BYTE:
        return (count + 1) // 2
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def weight_bytes(model: onnx.ModelProto) -> int:
    """The bytes of the model's initializers, wherever they lie: nearly all of a transformer's size, counted without
    serializing it (protobuf's `ByteSize` serializes the whole model: 24 ms on minilm-sst2, each time)."""
    return sum(map(nbytes, model.graph.initializer))


def model_bytes(model: onnx.ModelProto) -> int:
    """The size of the model as one protobuf would hold it (its external tensors' bytes inline), to the byte,
    without reading them: each inline tensor is its reference less the reference's fields plus a raw_data field."""
    return _message_bytes(model, lambda t: _inline_size(t) if is_external(t) else _own_size(t))


def serialized_bytes(model: onnx.ModelProto) -> int:
    """`model.ByteSize()` (external tensors as the references they are), without serializing the model: protobuf's
    `ByteSize` does, 0.13 s on minilm-sst2 each time, where this takes a few milliseconds."""
    return _message_bytes(model, _own_size)


def _message_bytes(model: onnx.ModelProto, tensor_bytes) -> int:
    """The model's size from the sizes of its parts: the graph without its initializers, each initializer's size as
    `tensor_bytes` gives it, and the messages around them grown by the lengths of their length prefixes."""
    if not model.HasField("graph"):
        return model.ByteSize()
    graph = _shell(model.graph, "initializer").ByteSize()
    graph += sum(_field(tensor_bytes(tensor)) for tensor in model.graph.initializer)
    return _shell(model, "graph").ByteSize() + _field(graph)


def _own_size(tensor: onnx.TensorProto) -> int:
    """`tensor.ByteSize()`, without serializing its raw data."""
    if not tensor.HasField("raw_data"):
        return tensor.ByteSize()
    return _shell(tensor, "raw_data").ByteSize() + _field(len(tensor.raw_data))


def _shell(message: Message, skip: str) -> Message:
    shell = type(message)()
    copy_fields(message, shell, skip)
    return shell


def copy_fields(source: Message, target: Message, skip: str) -> None:
    """Every set field of `source` into `target` but the one named `skip`, which is never read (a tensor's raw data
    is not copied; the caller takes the parts it needs)."""
    for field in source.DESCRIPTOR.fields:
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(getattr(source, field.name))
        elif source.HasField(field.name):
            if field.type == field.TYPE_MESSAGE:
                getattr(target, field.name).CopyFrom(getattr(source, field.name))
            else:
                setattr(target, field.name, getattr(source, field.name))


def _inline_size(tensor: onnx.TensorProto) -> int:
    bare = _shell(tensor, "external_data")
    bare.data_location = onnx.TensorProto.DEFAULT  # set, as onnx's loader sets it
    return bare.ByteSize() + _field(_span(tensor)[1])


def _field(length: int) -> int:
    """The bytes of a length-delimited protobuf field of `length` bytes whose number is below 16: a one-byte tag,
    the length as a varint, the bytes."""
    return 1 + max(1, -(-length.bit_length() // 7)) + length


def materialize_in_place(model: onnx.ModelProto) -> None:
    """Read every external tensor's bytes into the model (for callers that want a self-contained model)."""
    for tensor in model.graph.initializer:
        if is_external(tensor):
            tensor.raw_data = _read(tensor)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT


class DataFile:
    """A data file that tensors are appended to, each at an aligned offset, and referenced by its absolute path."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.path.touch()

    def store(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """The array written at the end of the file, as an external tensor named `name` (held in memory when it is
        under `EXTERNAL_THRESHOLD` bytes)."""
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return self.store_tensor(tensor) if nbytes(tensor) >= EXTERNAL_THRESHOLD else tensor

    def store_tensor(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """A tensor's bytes (from memory or from another file) appended, and the reference to them."""
        data = None if is_external(tensor) else _raw(tensor)
        length = _span(tensor)[1] if data is None else len(data)
        boundary = ALIGNMENT if length >= ALIGNMENT else 64
        with open(self.path, "r+b") as stream:
            offset = -stream.seek(0, os.SEEK_END) % boundary + stream.tell()
            stream.seek(offset)
            if data is None:
                _copy(tensor, stream)
            else:
                stream.write(data)
        stored = onnx.TensorProto()
        stored.name, stored.data_type, stored.data_location = tensor.name, tensor.data_type, EXTERNAL
        stored.dims.extend(tensor.dims)
        for key, value in (("location", str(self.path)), ("offset", str(offset)), ("length", str(length))):
            stored.external_data.add(key=key, value=value)
        return stored


def replacement(old: onnx.TensorProto, array: np.ndarray, data: DataFile | None) -> onnx.TensorProto:
    """A new value for the initializer `old`, under its name: written to `data` (when large) and referred to where
    `old` lies in a file, else held in the model."""
    if data is not None and is_external(old):
        return data.store(old.name, array)
    return numpy_helper.from_array(np.ascontiguousarray(array), old.name)


def _raw(tensor: onnx.TensorProto) -> bytes:
    return tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()


def _copy(tensor: onnx.TensorProto, target) -> None:
    """An external tensor's bytes copied into the open file `target` at its position, a chunk at a time."""
    offset, length = _span(tensor)
    with open(location(tensor), "rb") as source:
        source.seek(offset)
        for start in range(0, length, COPY_CHUNK):
            target.write(source.read(min(COPY_CHUNK, length - start)))


def stays_inline(tensor: onnx.TensorProto) -> bool:
    """A tensor held in memory that stays in the protobuf when a model is written with external data: small, or of
    strings."""
    return not is_external(tensor) and (
        tensor.data_type == onnx.TensorProto.STRING or nbytes(tensor) < EXTERNAL_THRESHOLD
    )


def common_folder(tensors: list[onnx.TensorProto]) -> Path:
    """The deepest folder that holds the files of every external tensor among `tensors` (the root of a file system
    when they lie far apart)."""
    folders = {str(location(t).parent) for t in tensors if is_external(t)}
    return Path(os.path.commonpath(sorted(folders))) if folders else Path.cwd()


def relative_to(tensors: list[onnx.TensorProto], folder: Path) -> list[onnx.TensorProto]:
    """Copies of the tensors, the absolute locations of the external ones made relative to `folder` (which holds
    them all): how a model handed to ONNX Runtime, or written out, must spell them."""
    copies = []
    for tensor in tensors:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        if is_external(copy):
            _set_entry(copy, "location", os.path.relpath(location(copy), folder))
        copies.append(copy)
    return copies
