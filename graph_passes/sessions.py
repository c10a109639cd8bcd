"""ONNX Runtime sessions over a model held in memory, at any size, with chosen inner tensors exposed as outputs.

A small model is handed to ONNX Runtime serialized. A model over `SERIALIZED_LIMIT` is opened from files instead:
ONNX Runtime holds about twice the bytes of a serialized model while it builds the session (the bytes, and the graph
parsed from them), and protobuf cannot serialize past 2 GB at all. `model_files` writes the graph (without its
weights, so the model is neither changed nor copied) and one data file that every large tensor is appended to at a
page-aligned offset, which ONNX Runtime maps instead of reading. Sessions opened from files run without the CPU
memory arena, which would otherwise keep the largest batch's activations for the session's lifetime. The temporary
folder is removed once the session is built, also on error and Ctrl-C.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import onnx
import onnxruntime as ort
from onnx import numpy_helper

from graph_passes.model_io import copy_fields

PROTOBUF_LIMIT = 2**31 - 2**26  # larger than this (with headroom) cannot be one serialized protobuf
SERIALIZED_LIMIT = 2**26  # larger models are opened from files (64 MiB)
EXTERNAL_THRESHOLD = 1024  # tensors of at least this many bytes go to the data file, as onnx.save does
ALIGNMENT = 2**16  # data offsets are multiples of this (a page on every platform), so ONNX Runtime can map them
DATA_FILE = "model.onnx.data"
CPU = ["CPUExecutionProvider"]


def fits_one_protobuf(model: onnx.ModelProto) -> bool:
    return model.ByteSize() <= PROTOBUF_LIMIT


def cpu_session(
    model: onnx.ModelProto,
    outputs: Sequence[str] = (),
    options: ort.SessionOptions | None = None,
    session_class: type[ort.InferenceSession] = ort.InferenceSession,
) -> ort.InferenceSession:
    """A CPU session of `model` whose outputs are the model's own followed by `outputs` (inner tensors)."""
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    if model.ByteSize() <= SERIALIZED_LIMIT:
        return session_class(_with_outputs(model, outputs).SerializeToString(), options, providers=CPU)
    options.enable_cpu_mem_arena = False
    with model_files(model, outputs) as path:
        return session_class(str(path), options, providers=CPU)


@contextmanager
def model_files(model: onnx.ModelProto, outputs: Sequence[str] = ()) -> Iterator[Path]:
    """`model` (with `outputs` exposed) as a temporary `model.onnx` whose large tensors lie in `DATA_FILE` beside
    it; the folder is removed on leaving the block, however it is left."""
    folder = Path(tempfile.mkdtemp(prefix="mi-compressor-session-"))
    try:
        skeleton = _with_outputs(model, outputs, initializers=False)
        with open(folder / DATA_FILE, "wb") as data:
            skeleton.graph.initializer.extend(_stored(tensor, data) for tensor in model.graph.initializer)
        path = folder / "model.onnx"
        path.write_bytes(skeleton.SerializeToString())
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _with_outputs(model: onnx.ModelProto, outputs: Sequence[str], initializers: bool = True) -> onnx.ModelProto:
    """`model` with `outputs` added to its graph's outputs: the model itself when there are none to add; else a copy
    (of everything but the initializers when `initializers` is False)."""
    present = {o.name for o in model.graph.output}
    added = [name for name in dict.fromkeys(outputs) if name not in present]
    if not added and initializers:
        return model
    copy = onnx.ModelProto()
    copy_fields(model, copy, skip="graph")
    copy_fields(model.graph, copy.graph, skip="" if initializers else "initializer")
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in added)
    return copy


def _stored(tensor: onnx.TensorProto, data: BinaryIO) -> onnx.TensorProto:
    """A large tensor's bytes appended to `data` at an aligned offset, and the reference to them; a small tensor (or
    one of strings, or one already external) as it is."""
    stored = onnx.TensorProto()
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type == onnx.TensorProto.STRING:
        stored.CopyFrom(tensor)
        return stored
    raw = tensor.raw_data if tensor.HasField("raw_data") else None
    if raw is None and math.prod(tensor.dims) * 4 >= EXTERNAL_THRESHOLD:
        raw = numpy_helper.to_array(tensor).tobytes()
    if raw is None or len(raw) < EXTERNAL_THRESHOLD:
        stored.CopyFrom(tensor)
        return stored
    offset = -data.tell() % ALIGNMENT + data.tell()
    data.seek(offset)
    data.write(raw)
    stored.name, stored.data_type, stored.data_location = tensor.name, tensor.data_type, onnx.TensorProto.EXTERNAL
    stored.dims.extend(tensor.dims)
    for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(len(raw)))):
        stored.external_data.add(key=key, value=value)
    return stored


# Operators ONNX Runtime registers in the default ONNX domain although ONNX has no such schema (its own fusions and
# the GenAI model builder emit them there): onnx.checker would refuse them, so it checks them as contrib operators.
ORT_DEFAULT_DOMAIN_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker at any size (a model over the protobuf limit is checked from a temporary file), accepting the
    operators ONNX Runtime adds to the ONNX domain (`ORT_DEFAULT_DOMAIN_OPS`)."""
    moved = [n for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type in ORT_DEFAULT_DOMAIN_OPS]
    for node in moved:
        node.domain = "com.microsoft"
    try:
        _check(model)
    finally:
        for node in moved:
            node.domain = ""


def _check(model: onnx.ModelProto) -> None:
    if fits_one_protobuf(model):
        onnx.checker.check_model(model)
        return
    with model_files(model) as path:
        onnx.checker.check_model(str(path))
