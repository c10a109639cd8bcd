"""Concrete shapes and values of every tensor, from one ONNX Runtime run on dummy inputs.

The channel analysis reads sizes from here instead of trusting symbolic shape inference, which loses track of
sizes computed at run time (Shape -> Gather -> Concat -> Reshape chains).

Image inputs (a float NCHW input read by a Conv, as ViT's `pixel_values`) get the Conv's channel count and a square
size read from the graph: a multiple k of the Conv's stride whose k x k patches, plus a class token or none, match
an axis of some initializer (the position embeddings).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping

import numpy as np
import onnx
import onnxruntime as ort

from graph_passes.errors import UnsupportedGraphError
from graph_passes.external_data import tensor_array
from graph_passes.sessions import cpu_session, trim_heap

# Distinct sizes for dynamic axes, chosen to be unlikely to coincide with channel sizes.
DYNAMIC_SIZES = (3, 11, 13, 17)


def dummy_inputs(model: onnx.ModelProto, image_size: int | None = None) -> dict[str, np.ndarray]:
    """Feeds for every graph input: ones for masks, zeros for other integer inputs, noise for floats; image inputs
    are `image_size` pixels square (dynamic sizes otherwise)."""
    initializer_names = {t.name for t in model.graph.initializer}
    images = _image_inputs(model)
    audio = audio_lengths(model)
    symbol_sizes: dict[str, int] = {}
    feeds = {}
    rng = np.random.default_rng(0)
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        shape = [_dim_size(dim, axis, symbol_sizes) for axis, dim in enumerate(tensor_type.shape.dim)]
        if value.name in images:
            shape = _image_shape(tensor_type.shape.dim, shape, images[value.name][0], image_size)
        if value.name in audio and not tensor_type.shape.dim[-1].HasField("dim_value"):
            shape[-1] = audio[value.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in value.name:
            feeds[value.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _image_inputs(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Float rank-4 graph inputs read by a Conv: name -> (channels, stride along the image)."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.input}
    found = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and ranks.get(node.input[0]) == 4 and len(weights.get(node.input[1], ())) == 4:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
            found.setdefault(node.input[0], (weights[node.input[1]][1] * group, max(strides)))
    return found


def audio_lengths(model: onnx.ModelProto) -> dict[str, int]:
    """Audio inputs (raw samples or spectrogram frames: a float input of rank 2 or 3 that reaches 1-D Convs, as
    wav2vec2's feature extractor): name -> the fewest samples for which those Convs still give `DYNAMIC_SIZES[1]`
    frames (kernels, strides, dilations and pads read backwards)."""
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    lengths = {}
    for value in model.graph.input:
        rank = len(value.type.tensor_type.shape.dim)
        elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if rank not in (2, 3) or not np.issubdtype(elem, np.floating):
            continue
        convs = [n for n in _reachable(value.name, consumers) if n.op_type == "Conv" and weights.get(n.input[1]) == 3]
        if convs:
            lengths[value.name] = _samples_for_frames(convs, DYNAMIC_SIZES[1])
    return lengths


def _reachable(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    seen: dict[int, onnx.NodeProto] = {}
    stack = [name]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if id(node) not in seen:
                seen[id(node)] = node
                stack.extend(node.output)
    return list(seen.values())


def _samples_for_frames(convs: list[onnx.NodeProto], frames: int) -> int:
    length = frames
    for conv in reversed(convs):
        attrs = {a.name: list(a.ints) for a in conv.attribute if a.ints}
        kernel = attrs.get("kernel_shape", [1])[0]
        stride, dilation = attrs.get("strides", [1])[0], attrs.get("dilations", [1])[0]
        length = max((length - 1) * stride + (kernel - 1) * dilation + 1 - sum(attrs.get("pads", [0, 0])), 1)
    return length


def _image_shape(dims, shape: list[int], channels: int, image_size: int | None) -> list[int]:
    """NCHW: the Conv's channels, the image size on dynamic spatial axes."""
    fixed = [dim.HasField("dim_value") and dim.dim_value > 0 for dim in dims]
    shape = list(shape)
    if not fixed[1]:
        shape[1] = channels
    for axis in (2, 3):
        if not fixed[axis] and image_size is not None:
            shape[axis] = image_size
    return shape


def image_sizes(model: onnx.ModelProto) -> list[int]:
    """Square image sizes worth trying, most plausible first: k x stride where k * k patches plus one class token
    (then none, then two) is the length of an axis of an initializer."""
    strides = {stride for _, stride in _image_inputs(model).values()}
    lengths = list(dict.fromkeys(d for t in model.graph.initializer if len(t.dims) >= 2 for d in t.dims))
    sizes = []
    for extra in (1, 0, 2):
        for length in lengths:
            side = math.isqrt(max(length - extra, 0))
            if side >= 1 and side * side == length - extra:
                sizes += [side * stride for stride in sorted(strides)]
    return list(dict.fromkeys(sizes))


def _dim_size(dim: onnx.TensorShapeProto.Dimension, axis: int, symbol_sizes: dict[str, int]) -> int:
    """A fixed size, or one per symbol; a sum of symbols (a decoder's mask over `past_sequence_length +
    sequence_length`) is the sum of theirs."""
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return dim.dim_value
    terms = [t.strip() for t in dim.dim_param.split("+")] if dim.dim_param else [f"axis{axis}"]
    for key in terms:
        if key not in symbol_sizes:
            symbol_sizes[key] = DYNAMIC_SIZES[min(len(symbol_sizes), len(DYNAMIC_SIZES) - 1)]
    return sum(symbol_sizes[key] for key in terms)


# Initializers up to this many bytes are converted once and kept; larger ones (the weights) on each lookup.
CACHED_BYTES = 1 << 16


class ProbedValues(MutableMapping):
    """Tensor values by name: the probe's feeds and node outputs as arrays, the model's initializers read from its
    protobuf, or mapped from their data file, on lookup (`external_data.tensor_array`).

    Holding a numpy copy of every weight doubled the memory of a model for the whole run, while callers read few
    weights, and most of them once. A large initializer is read on each lookup (a fresh array, or a read-only memory
    map of the file, never written back), so the model must not change while the values are used."""

    def __init__(self, initializers: list[onnx.TensorProto], arrays: dict[str, np.ndarray]) -> None:
        self._tensors: dict[str, onnx.TensorProto] = {}
        self._arrays: dict[str, np.ndarray] = {}
        for tensor in initializers:
            if _byte_size(tensor) <= CACHED_BYTES:
                self._arrays[tensor.name] = np.array(tensor_array(tensor))
            else:
                self._tensors[tensor.name] = tensor
        for name, value in arrays.items():
            self[name] = value

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._arrays:
            return self._arrays[name]
        return tensor_array(self._tensors[name])

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._tensors.pop(name, None)
        self._arrays[name] = value

    def __delitem__(self, name: str) -> None:
        if name in self._arrays:
            del self._arrays[name]
        else:
            del self._tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._arrays or name in self._tensors

    def __iter__(self) -> Iterator[str]:
        yield from self._tensors
        yield from self._arrays

    def __len__(self) -> int:
        return len(self._tensors) + len(self._arrays)


def _byte_size(tensor: onnx.TensorProto) -> int:
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def probe_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None) -> ProbedValues:
    """Run the model once with every node output exposed; return the value of every tensor by name (initializers
    read from `model` on lookup: `ProbedValues`).

    Without `feeds`, dummy inputs are made; a model with image inputs is tried at each plausible image size."""
    if feeds is not None:
        return _probe(model, feeds)
    sizes = image_sizes(model) if _image_inputs(model) else []
    for size in sizes:
        try:
            return _probe(model, dummy_inputs(model, size))
        except UnsupportedGraphError:
            continue
    try:
        return _probe(model, dummy_inputs(model))
    except UnsupportedGraphError as exc:
        if sizes or not _image_inputs(model):
            raise
        raise UnsupportedGraphError(
            f"{exc}; the image inputs {sorted(_image_inputs(model))} have no size the graph tells (no initializer "
            "axis holds k x k patches)"
        ) from exc


def _exposed_run(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], options: ort.SessionOptions
) -> tuple[list[str], list]:
    """Every tensor's name and value from one run of a session that exposes them all (released on return)."""
    inner = [name for node in model.graph.node for name in node.output if name]
    session = cpu_session(model, inner, options)
    names = [o.name for o in session.get_outputs()]
    return names, session.run(names, feeds)


def _probe(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> ProbedValues:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # a failed try is expected (image sizes) and reported in one line, not logged
    try:
        names, results = _exposed_run(model, feeds, options)
    except Exception as exc:  # ORT raises several unrelated types for one cause: the graph does not run
        raise UnsupportedGraphError(
            f"ONNX Runtime cannot run the model on dummy inputs: {exc}".splitlines()[0]
        ) from exc
    trim_heap()  # the session is gone, and what it freed is handed back rather than kept in the C heap
    values = dict(feeds)
    values.update(zip(names, (np.asarray(r) for r in results)))
    return ProbedValues(list(model.graph.initializer), values)
