"""Writing results: atomic files, never over the input, optionally as a folder that optimum and transformers load."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx

from compressor.errors import OutputPathError

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


def write_model(model: onnx.ModelProto, model_file: Path, source_folder: Path | None) -> None:
    """Write the model; into a folder output also copy the source's config and tokenizer files."""
    write_atomic(model_file, model.SerializeToString())
    if model_file.name == "model.onnx" and source_folder is not None and source_folder != model_file.parent:
        for name in COMPANION_FILES:
            if (source_folder / name).is_file():
                write_atomic(model_file.parent / name, (source_folder / name).read_bytes())


def write_report(report: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
