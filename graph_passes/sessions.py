"""ONNX Runtime sessions over a model held in memory, at any size, with chosen inner tensors exposed as outputs.

A model that fits one protobuf (2 GB, less headroom) is handed to ONNX Runtime serialized. A larger one cannot be
serialized: it is written to a temporary folder with its weights as external data, opened from there, and the folder
is removed once the session holds the weights (also on error). Exposed outputs are added to the model for the
session's creation and removed again, so the model is never copied.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

PROTOBUF_LIMIT = 2**31 - 2**26  # larger than this (with headroom) cannot be one serialized protobuf


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
    graph_outputs = model.graph.output
    present = {o.name for o in graph_outputs}
    added = [name for name in dict.fromkeys(outputs) if name not in present]
    graph_outputs.extend(onnx.ValueInfoProto(name=name) for name in added)
    try:
        if fits_one_protobuf(model):
            return session_class(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return _from_files(model, options, session_class)
    finally:
        for _ in added:
            graph_outputs.pop()


def _from_files(
    model: onnx.ModelProto, options: ort.SessionOptions, session_class: type[ort.InferenceSession]
) -> ort.InferenceSession:
    folder = Path(tempfile.mkdtemp(prefix="mi-compressor-session-"))
    try:
        path = folder / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
        onnx.load_external_data_for_model(model, str(folder))  # onnx.save moved the weights out of `model`
        return session_class(str(path), options, providers=["CPUExecutionProvider"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    folder = Path(tempfile.mkdtemp(prefix="mi-compressor-check-"))
    try:
        path = folder / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
        onnx.load_external_data_for_model(model, str(folder))
        onnx.checker.check_model(str(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
