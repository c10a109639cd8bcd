"""Models whose weights live in external data files: compressed like any other, written the same way, and never
allowed to read a data file outside their folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.workload import feeds
from graph_passes.model_io import external_data_files


def compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "command_line", *args], capture_output=True, text=True, timeout=600, check=False
    )


def _save_external(model: onnx.ModelProto, path, location: str) -> None:
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)  # fmt: skip


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def external_folder(tiny_folder, tmp_path):
    folder = tmp_path / "external"
    folder.mkdir()
    _save_external(onnx.load(str(tiny_folder / "model.onnx")), folder / "model.onnx", "weights.bin")
    return folder


def test_external_data_in_external_data_out_same_model_as_inline(tiny_folder, external_folder, tmp_path):
    before = _digest(external_folder)
    common = ["--keep", "0.5", "--calib", str(tiny_folder / "calib.tsv"), "--tokenizer", str(tiny_folder)]
    external = compress(str(external_folder / "model.onnx"), *common, "--out", str(tmp_path / "small"))
    inline = compress(str(tiny_folder / "model.onnx"), *common, "--out", str(tmp_path / "inline"))
    assert external.returncode == 0 and inline.returncode == 0, external.stderr
    assert _digest(external_folder) == before  # the input and its data file are untouched
    out = tmp_path / "small" / "model.onnx"
    graph = onnx.load(str(out), load_external_data=False)
    assert external_data_files(graph) == ["model.onnx.data"]
    assert (tmp_path / "small" / "model.onnx.data").stat().st_size > out.stat().st_size
    assert not [p for p in (tmp_path / "small").iterdir() if p.name.startswith(".")]  # no staging left behind
    batch = feeds(graph, 3, 10)
    runs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (out, tmp_path / "inline" / "model.onnx")
    ]
    a, b = (run.run(None, batch)[0] for run in runs)
    assert np.allclose(a, b, atol=1e-5)
    kept = [json.loads((tmp_path / d / "report.json").read_text())["groups"] for d in ("small", "inline")]
    assert kept[0] == kept[1]


@pytest.mark.parametrize("where", ["../outside.bin", "ABSOLUTE"])
def test_external_data_outside_the_model_folder_is_refused(tiny_folder, tmp_path, where):
    folder = tmp_path / "models"
    folder.mkdir()
    location = str(tmp_path / "outside.bin") if where == "ABSOLUTE" else where
    model = onnx.load(str(tiny_folder / "model.onnx"))
    _save_external(model, folder / "model.onnx", "weights.bin")
    (folder / "weights.bin").rename(tmp_path / "outside.bin")
    edited = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in edited.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(edited, str(folder / "model.onnx"))
    result = compress(str(folder / "model.onnx"), "--keep", "0.5", "--calib", str(tiny_folder / "calib.tsv"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "lies outside the model's folder" in result.stderr and location in result.stderr


def test_a_missing_external_data_file_is_named(tiny_folder, external_folder):
    (external_folder / "weights.bin").unlink()
    result = compress(str(external_folder / "model.onnx"), "--keep", "0.5", "--calib", str(tiny_folder / "calib.tsv"))
    assert result.returncode == 2 and "external data file 'weights.bin' is missing" in result.stderr
