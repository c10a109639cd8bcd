"""Writing results: atomic files, optionally as a folder that optimum and transformers load (paths planned in `paths`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from compressor import genai_folder, model_config
from compressor.paths import CompressPaths
from graph_passes.external_data import has_external_data
from graph_passes.model_io import external_data_files, save_with_data
from graph_passes.sessions import fits_one_protobuf


@contextmanager
def workspace_beside(path: Path) -> Iterator[Path]:
    """A temporary folder beside the output `path` (in its nearest existing ancestor while its own folder is not
    made yet), for the weights a run writes on the way: on the output's file system, and removed however the block
    is left (an error, Ctrl-C)."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.work-", dir=folder) as work:
        yield Path(work)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_model(model: onnx.ModelProto, paths: CompressPaths, source: Path | None, report: dict | None = None) -> None:
    """Write the model; into a folder output also copy the source's config and tokenizer files, with config.json
    rewritten to a compressed decoder's architecture (`model_config`, and genai_config.json by `genai_folder`; given
    its `report`). A decoder that config.json cannot describe is refused before anything is written.

    When the source keeps its weights in external data (or the model is too large for one protobuf), so does the
    output: one data file, `paths.data_file`, beside the output (checked by `plan_compress` not to be an input)."""
    companions = [(destination, origin.read_bytes()) for origin, destination in paths.companions]
    if report is not None:
        companions = [(destination, _updated(destination, data, model, report)) for destination, data in companions]
    inputs_data = [] if source is None else external_data_files(onnx.load(str(source), load_external_data=False))
    if inputs_data or has_external_data(model) or not fits_one_protobuf(model):
        _write_with_external_data(model, paths.model_file, paths.data_file)
    else:
        write_atomic(paths.model_file, model.SerializeToString())
    for destination, data in companions:
        write_atomic(destination, data)


def _updated(destination: Path, data: bytes, model: onnx.ModelProto, report: dict) -> bytes:
    if destination.name == genai_folder.CONFIG_FILE:
        return genai_folder.rewrite(data, model, report)
    if destination.name != model_config.CONFIG_FILE:
        return data
    return model_config.rewrite(data, model, report) or data


def _write_with_external_data(model: onnx.ModelProto, model_file: Path, data_file: Path) -> None:
    """The model file and its data file, both written in a temporary folder beside them, then moved (data first):
    the weights are copied from the files the model refers to, never read into memory whole."""
    model_file.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_file.name}.", dir=model_file.parent))
    try:
        save_with_data(model, staging / model_file.name, data_file.name)
        os.replace(staging / data_file.name, data_file)
        os.replace(staging / model_file.name, model_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_report(report: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
