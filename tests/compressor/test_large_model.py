"""A model past the protobuf limit (2 GB), built with numpy and onnx helpers (`bench.large_models`), compressed by the
command line: written with external data, loadable from its path, smaller, and with the peak memory in the report.
Slow (23 minutes on a 2-core machine, f33575d; 35 on 89bb9a2; memory: BENCHMARKS.md's size
section): left out of CI by the `slow` marker (`pytest -m slow` runs it)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.large_models import Shape, build
from bench.workload import feeds
from graph_passes.model_io import external_data_files
from graph_passes.sessions import PROTOBUF_LIMIT

SHAPE = Shape(layers=10, hidden=2048, heads=16, ffn=8192)  # 566 M parameters, 2.26 GB in float32


@pytest.mark.slow
def test_a_model_past_two_gigabytes_compresses(tmp_path):
    model = build(SHAPE, tmp_path / "big" / "model.onnx")
    weights = sum(p.stat().st_size for p in model.parent.iterdir())
    assert weights > PROTOBUF_LIMIT
    out = tmp_path / "small"
    command = [sys.executable, "-m", "command_line", str(model), "--keep", "0.5", "--samples", "16",
               "--max-length", "16", "--out", str(out), "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=3000, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data", "report.json"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert external_data_files(graph) == ["model.onnx.data"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds(graph, 2, 8))[0]
    assert np.isfinite(outputs).all() and outputs.shape == (2, 8, SHAPE.hidden)
    report = json.loads((out / "report.json").read_text())
    assert (out / "model.onnx.data").stat().st_size < 0.8 * weights
    assert report["peak_rss_gb"]["total"] * 2**30 > weights  # the process's own peak: it held the weights
