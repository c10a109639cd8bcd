"""Which files a run reads and which it writes, planned and checked before any work.

No output may be an input (the model, its external data, the calibration file, the tokenizer's files) or another
output, and every output's folder must exist or be creatable, and be writable. A check that fails raises
OutputPathError, so a refused run has written nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from compressor import genai_folder
from compressor.errors import OutputPathError
from graph_passes import NotOnnxError
from graph_passes.model_io import external_data_files

MODEL_FILE = "model.onnx"
COMPANION_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spm.model",
    "tokenizer.model",
    "added_tokens.json",
)


@dataclass(frozen=True)
class Named:
    """A path with the words that name it in a message: "--report", "the input model"."""

    what: str
    path: Path


@dataclass(frozen=True)
class CompressPaths:
    """Where `compress` writes: the model, its external data file (used when the model needs one), the report, and
    the source's config and tokenizer files copied into a folder output."""

    model_file: Path
    data_file: Path
    report_file: Path
    companions: tuple[tuple[Path, Path], ...]  # (source, destination)


def model_file(path: Path) -> Path:
    """The model a path names: the file itself, the decoder file named by a folder's genai_config.json (an ONNX
    Runtime GenAI folder), or `model.onnx` inside a folder (an optimum export folder)."""
    if not path.is_dir():
        return path
    if genai_folder.is_genai_folder(path):
        return genai_folder.model_path(path)
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    found = sorted(p.name for p in path.glob("*.onnx"))
    hint = f"; it holds {', '.join(found[:5])}: pass one of them" if found else ""
    raise NotOnnxError(f"{path} is a folder without {MODEL_FILE}{hint}")


def model_inputs(model: Path) -> list[Named]:
    """The model file and the external data files it refers to (none when it cannot be parsed: loading says why)."""
    named = [Named("the input model", model)]
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # an unreadable model is reported by the loader, with its reason
        return named
    return named + [
        Named("the input model's external data", model.parent / name) for name in external_data_files(proto)
    ]


def tokenizer_inputs(folder: Path | None) -> list[Named]:
    if folder is None or not folder.is_dir():
        return []
    names = COMPANION_FILES + ((genai_folder.CONFIG_FILE,) if genai_folder.is_genai_folder(folder) else ())
    return [Named("a tokenizer file", folder / name) for name in names if (folder / name).is_file()]


def plan_compress(
    model: Path, out: Path | None, report: Path | None, keep: float, inputs: list[Named]
) -> CompressPaths:
    """The outputs of `compress MODEL`: `out` is an .onnx file, or a folder that receives model.onnx (and then the
    source's config and tokenizer files); by default MODEL.keepK.onnx beside the input. The folder output of an ONNX
    Runtime GenAI folder's decoder is a GenAI folder: the model under the file name genai_config.json gives, its
    external data under the input's data file name, and every other file of the input folder copied
    (genai_config.json rewritten by `output`)."""
    out = out or model.with_name(f"{model.stem}.keep{keep:g}.onnx")
    as_file = out.suffix == ".onnx"
    genai = not as_file and genai_folder.names_model(model.parent, model)
    target = out if as_file else out / (model.name if genai else MODEL_FILE)
    report = report or (out.with_suffix(".report.json") if as_file else out / "report.json")
    data_file = target.with_name(f"{target.name}.data")
    companions: tuple[tuple[Path, Path], ...] = ()
    if genai:
        data_files = [n.path for n in model_inputs(model)[1:]]
        data_file = out / data_files[0].name if len(data_files) == 1 else data_file
        companions = _genai_companions(model, {model, *data_files}, out, report)
    elif not as_file and not _same(out, model.parent):
        companions = tuple(
            (model.parent / name, out / name) for name in COMPANION_FILES if (model.parent / name).is_file()
        )
    paths = CompressPaths(target, data_file, report, companions)
    outputs = [
        Named("--out", target),
        Named("the output's external data", paths.data_file),
        Named("--report", report),
        *(Named("--out (a copied config or tokenizer file)", dest) for _, dest in companions),
    ]
    check_outputs(outputs, inputs)
    return paths


def _genai_companions(model: Path, sources: set[Path], out: Path, report: Path) -> tuple[tuple[Path, Path], ...]:
    """Every top-level file of a GenAI folder but the model and its data (and a previous report where the new one
    goes): tokenizer, genai_config.json, chat templates, processor configs."""
    if _same(out, model.parent):
        return ()
    files = sorted(p for p in model.parent.iterdir() if p.is_file() and not p.name.startswith("."))
    return tuple(
        (path, out / path.name)
        for path in files
        if not any(_same(path, source) for source in sources) and not _same(out / path.name, report)
    )


def check_outputs(outputs: list[Named], inputs: list[Named]) -> None:
    """Refuse outputs that would overwrite an input or each other, or that cannot be written where they are."""
    for index, output in enumerate(outputs):
        for source in inputs:
            if _same(output.path, source.path):
                raise OutputPathError(
                    f"{output.what} {output.path} would overwrite {source.what} {source.path}; choose another path"
                )
        for other in outputs[:index]:
            if _same(output.path, other.path):
                raise OutputPathError(f"{output.what} and {other.what} are the same file {output.path}; separate them")
        _check_writable(output)


def _check_writable(output: Named) -> None:
    if output.path.is_dir():
        raise OutputPathError(f"{output.what} {output.path} is a folder; give a file path")
    ancestor = output.path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(
            f"{output.what} {output.path} cannot be created: {ancestor} is a file, not a folder; choose another path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{output.what} {output.path} cannot be written: {ancestor} is not writable")


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
