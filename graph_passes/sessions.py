"""ONNX Runtime sessions over a model held in memory, at any size, with chosen inner tensors exposed as outputs.

A model held in memory, with up to `LENT_LIMIT` bytes of weights, is handed to ONNX Runtime as its graph, and its
large tensors are lent (`_lent`): ONNX Runtime computes with numpy's buffers, neither parsing nor copying them. A model
with more, or whose weights stay in files (`graph_passes.external_data`), is handed over as its graph alone: every
large tensor an external reference, spelled relative to one folder that holds all the files, which ONNX Runtime is told
(`EXTERNAL_FOLDER`). The model's own data files are read where they lie, memory-mapped by ONNX Runtime, never copied;
only large tensors held in memory (refit weights) are written, to a data file in a temporary folder that is removed
once the session is built, also on error and Ctrl-C. Larger models are not lent their tensors: each lent tensor is a
copy of the protobuf's bytes, held for the session's lifetime, where ONNX Runtime unmaps a file's weight once it has
packed it. Sessions through files run without the CPU memory arena, which would otherwise keep the largest batch's
activations for the session's lifetime. Prepacking stays on: ONNX Runtime unmaps a weight once it has packed it
(measured: 0.5 GB of MatMul weights, 0.5 GB resident either way), and without it MLAS computes in another order
(minilm-sst2's fidelity moved in the sixth digit).
"""

from __future__ import annotations

import ctypes
import gc
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graph_passes.external_data import (
    DataFile,
    common_folder,
    copy_fields,
    has_external_data,
    is_external,
    relative_to,
    serialized_bytes,
    stays_inline,
    tensor_array,
    weight_bytes,
)
from graph_passes.model_io import tensors_read

PROTOBUF_LIMIT = 2**31 - 2**26  # larger than this (with headroom) cannot be one serialized protobuf
LENT_LIMIT = 2**28  # models with more bytes of weights are handed over as a graph with external data (256 MiB)
DATA_FILE = "model.onnx.data"
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
CPU = ["CPUExecutionProvider"]
LENT = "lent"  # where a session's model says a lent tensor lies (`_lent`): ONNX Runtime is given its value instead
LENDABLE = {  # the tensor types whose values numpy holds as ONNX Runtime does, and can lend it
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}


_LIBC = ctypes.CDLL(None)
_TRIM = getattr(_LIBC, "malloc_trim", None)  # glibc's; other C libraries have none
_MALLOPT = getattr(_LIBC, "mallopt", None)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MAPPED_BYTES = 2**23  # allocations of at least 8 MiB are mapped, and unmapped when freed


def map_large_allocations() -> None:
    """From now on glibc serves every allocation of at least `MAPPED_BYTES` by its own mapping, returned to the
    system when it is freed, instead of raising its mmap threshold (up to 32 MB) as large blocks are freed and then
    keeping such blocks in a heap that fragments. BERT-large's shape peaked at 1.83 to 1.95 GB from run to run and
    commit to commit without it (recovery's reselection), at 1.62 GB with a 1 MiB threshold (which cost minilm-sst2's
    compress 4 s in page faults; 8 MiB cost 0.6 s)."""
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, MAPPED_BYTES)


def return_freed_memory() -> None:
    """Hand back to the system the memory that released sessions and arrays left in the C heap. glibc keeps freed
    blocks below its mmap threshold (which rises to 32 MB as larger blocks are freed) for reuse: after a session of
    TinyLlama's shape ran 16 samples, 2 GB of its activations stayed resident through scoring. Elsewhere only the
    garbage collector runs."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """`return_freed_memory` without the garbage collector, for memory freed by reference counts alone (a session
    released on return): a collection costs 0.17 s once transformers is imported. After the FLOPs probe of
    BERT-large's pruned shape, 0.66 GB stayed resident into recovery, lifting its peak by as much."""
    if _TRIM is not None:
        _TRIM(0)


def fits_one_protobuf(model: onnx.ModelProto) -> bool:
    return serialized_bytes(model) <= PROTOBUF_LIMIT


def cpu_session(
    model: onnx.ModelProto,
    outputs: Sequence[str] = (),
    options: ort.SessionOptions | None = None,
    session_class: type[ort.InferenceSession] = ort.InferenceSession,
) -> ort.InferenceSession:
    """A CPU session of `model` whose outputs are the model's own followed by `outputs` (inner tensors). By default
    its threads sleep between runs rather than spin: the pipeline computes with numpy's BLAS between runs, on the same
    cores (minilm-sst2's recovery at keep 0.4 took 14.9 s beside spinning threads, 10.8 s without)."""
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if weight_bytes(model) <= LENT_LIMIT and not has_external_data(model):
        graph, names, values = _lent(model, outputs)
        options.add_external_initializers(names, values)
        session = session_class(graph.SerializeToString(), options, providers=CPU)
        session.lent_initializers = values  # ONNX Runtime computes with these buffers for the session's lifetime
        return session
    options.enable_cpu_mem_arena = False
    with referenced(model, outputs) as (graph, folder):
        options.add_session_config_entry(EXTERNAL_FOLDER, str(folder))
        return session_class(graph.SerializeToString(), options, providers=CPU)


def _lent(model: onnx.ModelProto, outputs: Sequence[str]) -> tuple[onnx.ModelProto, list[str], list[ort.OrtValue]]:
    """`model` (with `outputs` exposed) whose large tensors of numpy types are external references to `LENT`, with
    their names and values, which ONNX Runtime is lent (`add_external_initializers`) rather than handed in the
    serialized model: it then neither parses nor copies them (minilm-sst2's session: 0.23 s made from the whole
    serialized model, 0.13 s so). A tensor that nothing reads stays in the model: ONNX Runtime drops such tensors
    before it takes the lent ones, and then refuses a lent tensor it no longer finds."""
    graph = _with_outputs(model, outputs, initializers=False)
    read = tensors_read(graph.graph)
    names, values = [], []
    for tensor in model.graph.initializer:
        if stays_inline(tensor) or tensor.data_type not in LENDABLE or tensor.name not in read:
            graph.graph.initializer.append(tensor)
            continue
        shell = graph.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        shell.data_location = onnx.TensorProto.EXTERNAL
        shell.external_data.add(key="location", value=LENT)
        names.append(tensor.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(tensor_array(tensor))))
    return graph, names, values


@contextmanager
def referenced(model: onnx.ModelProto, outputs: Sequence[str] = ()) -> Iterator[tuple[onnx.ModelProto, Path]]:
    """`model` (with `outputs` exposed) whose large tensors are all external references, relative to the folder
    given with it. External tensors keep their files; large tensors held in memory are written to `DATA_FILE` in a
    temporary folder, removed on leaving the block, however it is left."""
    folder = None
    try:
        tensors = []
        for tensor in model.graph.initializer:
            if is_external(tensor) or stays_inline(tensor):
                tensors.append(tensor)
                continue
            if folder is None:
                folder = Path(tempfile.mkdtemp(prefix="mi-compressor-session-"))
                data = DataFile(folder / DATA_FILE)
            tensors.append(data.store_tensor(tensor))
        root = common_folder(tensors)
        graph = _with_outputs(model, outputs, initializers=False)
        graph.graph.initializer.extend(relative_to(tensors, root))
        yield graph, root
    finally:
        if folder is not None:
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


# Operators ONNX Runtime registers in the default ONNX domain although ONNX has no such schema (its own fusions and
# the GenAI model builder emit them there): onnx.checker would refuse them, so it checks them as contrib operators.
ORT_DEFAULT_DOMAIN_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker at any size (a model with its weights in files, or over the protobuf limit, is checked without
    them: `_declared`), accepting the operators ONNX Runtime adds to the ONNX domain (`ORT_DEFAULT_DOMAIN_OPS`)."""
    moved = [n for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type in ORT_DEFAULT_DOMAIN_OPS]
    for node in moved:
        node.domain = "com.microsoft"
    try:
        _check(model)
    finally:
        for node in moved:
            node.domain = ""


def _check(model: onnx.ModelProto) -> None:
    if fits_one_protobuf(model) and not has_external_data(model):
        onnx.checker.check_model(model)
    else:
        onnx.checker.check_model(_declared(model))


def _declared(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large tensors (those in files, and those that a file would hold) are declared as graph inputs of
    their type and shape instead: the graph onnx.checker reads is the same, small enough for one protobuf, and it
    does not look for data files relative to the working folder (ONNX Runtime reads them when it opens a session)."""
    graph = _with_outputs(model, (), initializers=False)
    inputs = {value.name for value in graph.graph.input}
    for tensor in model.graph.initializer:
        if stays_inline(tensor):
            graph.graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            graph.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return graph
