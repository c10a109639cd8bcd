"""Writing results: atomic files, never over the input, optionally as a folder that optimum and transformers load."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from compressor.errors import OutputPathError
from graph_passes.model_io import external_data_files

PROTOBUF_LIMIT = 2**31 - 2**26  # a model larger than this (with headroom) cannot be one protobuf

COMPANION_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spm.model",
    "added_tokens.json",
)


def default_output(model_path: Path, keep: float) -> Path:
    return model_path.with_name(f"{model_path.stem}.keep{keep:g}.onnx")


def plan_outputs(model_path: Path | None, out: Path | None, report: Path | None, keep: float) -> tuple[Path, Path]:
    """(model file, report file). An `out` without the .onnx suffix is a folder that receives model.onnx."""
    if out is None:
        if model_path is None:
            raise OutputPathError("give --out: the model did not come from a file")
        out = default_output(model_path, keep)
    model_file = out if out.suffix == ".onnx" else out / "model.onnx"
    if model_path is not None and model_file.resolve() == model_path.resolve():
        raise OutputPathError(f"the output {model_file} is the input model; choose another --out")
    if report is None:
        report = model_file.with_name("report.json") if out.suffix != ".onnx" else out.with_suffix(".report.json")
    return model_file, report


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


def write_model(model: onnx.ModelProto, model_file: Path, source: Path | None) -> None:
    """Write the model; into a folder output also copy the source's config and tokenizer files.

    When the source keeps its weights in external data (or the model is too large for one protobuf), so does the
    output: one data file, `<output name>.data`, beside the output, never one of the source's files."""
    source_folder = None if source is None else source.parent
    inputs_data = [] if source is None else external_data_files(onnx.load(str(source), load_external_data=False))
    if inputs_data or model.ByteSize() > PROTOBUF_LIMIT:
        _write_with_external_data(model, model_file, [source_folder / name for name in inputs_data])
    else:
        write_atomic(model_file, model.SerializeToString())
    if model_file.name == "model.onnx" and source_folder is not None and source_folder != model_file.parent:
        for name in COMPANION_FILES:
            if (source_folder / name).is_file():
                write_atomic(model_file.parent / name, (source_folder / name).read_bytes())


def _write_with_external_data(model: onnx.ModelProto, model_file: Path, protected: list[Path]) -> None:
    """The model file and its data file, both written in a temporary folder beside them, then moved (data first)."""
    data_file = model_file.with_name(f"{model_file.name}.data")
    if any(data_file.resolve() == p.resolve() for p in protected):
        raise OutputPathError(f"the output's data file {data_file} is the input's external data; choose another --out")
    model_file.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_file.name}.", dir=model_file.parent))
    try:
        onnx.save(model, str(staging / model_file.name), save_as_external_data=True, location=data_file.name)
        onnx.load_external_data_for_model(model, str(staging))  # onnx.save moved the weights out of `model`
        os.replace(staging / data_file.name, data_file)
        os.replace(staging / model_file.name, model_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_report(report: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
