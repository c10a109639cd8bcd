"""Concrete shapes and values of every tensor, from one ONNX Runtime run on dummy inputs.

The channel analysis reads sizes from here instead of trusting symbolic shape inference, which loses track of
sizes computed at run time (Shape -> Gather -> Concat -> Reshape chains).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from graph_passes.errors import UnsupportedGraphError

# Distinct sizes for dynamic axes, chosen to be unlikely to coincide with channel sizes.
DYNAMIC_SIZES = (3, 11, 13, 17)


def dummy_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Feeds for every graph input: ones for masks, zeros for other integer inputs, noise for floats."""
    initializer_names = {t.name for t in model.graph.initializer}
    symbol_sizes: dict[str, int] = {}
    feeds = {}
    rng = np.random.default_rng(0)
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        shape = [_dim_size(dim, axis, symbol_sizes) for axis, dim in enumerate(tensor_type.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in value.name:
            feeds[value.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _dim_size(dim: onnx.TensorShapeProto.Dimension, axis: int, symbol_sizes: dict[str, int]) -> int:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return dim.dim_value
    key = dim.dim_param or f"axis{axis}"
    if key not in symbol_sizes:
        symbol_sizes[key] = DYNAMIC_SIZES[min(len(symbol_sizes), len(DYNAMIC_SIZES) - 1)]
    return symbol_sizes[key]


def probe_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run the model once with every node output exposed; return the value of every tensor by name."""
    feeds = dummy_inputs(model) if feeds is None else feeds
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in known:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
    except Exception as exc:  # ORT raises several unrelated types for one cause: the graph does not run
        raise UnsupportedGraphError(
            f"ONNX Runtime cannot run the model on dummy inputs: {exc}".splitlines()[0]
        ) from exc
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values.update(feeds)
    values.update(zip(names, (np.asarray(r) for r in results)))
    return values
