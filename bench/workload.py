"""Inputs for a benchmark run: `batch` sequences of `seq` tokens, shaped like what a tokenizer hands the model.

Token ids are drawn from the model's own vocabulary (the rows of the embedding table the ids index), masks are all
ones and token type ids zeros: every position is real work, none is padding. A decoder (`compressor.decoder`) gets a
prefill: the prompts as `input_ids`, empty KV caches, position ids 0..seq-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from bench.errors import BenchError
from compressor.calibration import index_bounds
from compressor.decoder import TOKENS, detect
from graph_passes.model_io import external_data_files


def load_graph(path: Path) -> onnx.ModelProto:
    """The model's graph without its external weights (enough for inputs, sizes and counts)."""
    if not path.is_file():
        raise BenchError(f"{path}: no such file; pass the path of an .onnx model")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and OS errors alike mean: not a readable ONNX file
        raise BenchError(f"{path} is not a readable ONNX model ({type(exc).__name__}); give an .onnx file") from exc


def feeds(model: onnx.ModelProto, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch for every graph input; rank-1 inputs get (batch,), rank-2 (batch, seq), floats (batch, seq, ...);
    a decoder's the feeds of a prefill of `seq` tokens with empty caches."""
    initializers = {t.name for t in model.graph.initializer}
    bounds = index_bounds(model)
    rng = np.random.default_rng(seed)
    decoder = detect(model)
    if decoder is not None:
        vocab = bounds.get(TOKENS) or decoder.vocab or 2
        return decoder.feeds({TOKENS: rng.integers(0, vocab, size=(batch, seq)).astype(np.int64)})
    arrays = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        shape = [_size(value.name, axis, dim, (batch, seq)) for axis, dim in enumerate(tensor.shape.dim)]
        if np.issubdtype(dtype, np.floating):
            arrays[value.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in value.name:
            arrays[value.name] = np.ones(shape, dtype=dtype)
        elif value.name in bounds and "type" not in value.name:
            arrays[value.name] = rng.integers(0, bounds[value.name], size=shape).astype(dtype)
        else:
            arrays[value.name] = np.zeros(shape, dtype=dtype)
    return arrays


def _size(name: str, axis: int, dim: onnx.TensorShapeProto.Dimension, wanted: tuple[int, int]) -> int:
    """The size asked for on the batch (0) and sequence (1) axes; a fixed size elsewhere, or a fixed size that
    differs from the one asked for, is an error naming the input."""
    fixed = dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
    if axis >= len(wanted):
        if fixed is None:
            raise BenchError(f"input {name!r} has a dynamic axis {axis}; bench only sizes batch and sequence axes")
        return fixed
    if fixed is not None and fixed != wanted[axis]:
        option = ("--batch", "--seq")[axis]
        raise BenchError(f"input {name!r} has a fixed size {fixed} on axis {axis}; use {option} {fixed}")
    return wanted[axis]


def parameter_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def file_bytes(path: Path, model: onnx.ModelProto) -> int:
    """The model file plus the external data files it refers to."""
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in external_data_files(model))
