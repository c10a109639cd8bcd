"""`compress --quantize int8` / `int4`: quantized after pruning and recovery, with its own fidelity; int8 input is
refused. (int4 on decoders and GenAI folders: tests/compressor/test_genai_compress.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import tiny_models

from compressor import compress as compress_model
from compressor.fidelity import session
from compressor.optimization import fuse
from compressor.quantization import quantize_int8
from graph_passes import load_model


def compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "command_line", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_quantize_int8_ships_an_int8_model_and_reports_both_fidelities(tiny_folder, tmp_path):
    calib = str(tiny_folder / "calib.tsv")
    float_run = compress(
        str(tiny_folder / "model.onnx"), "--keep", "0.5", "--calib", calib, "--out", str(tmp_path / "f")
    )
    int8_run = compress(
        str(tiny_folder / "model.onnx"), "--keep", "0.5", "--calib", calib, "--out", str(tmp_path / "q"),
        "--quantize", "int8",
    )  # fmt: skip
    assert float_run.returncode == 0 and int8_run.returncode == 0, int8_run.stderr
    assert "int8: mean cosine" in int8_run.stdout
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    float_report = json.loads((tmp_path / "f" / "report.json").read_text())
    quantization = report["quantization"]
    assert quantization["type"] == "int8" and float_report["quantization"] is None
    assert report["fidelity"] == float_report["fidelity"]  # the float model's, unchanged by quantizing after
    assert 0.9 < quantization["fidelity"]["mean_cosine"] <= 1.0 + 1e-9
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    assert report["file_bytes"]["after"] == model.ByteSize() < 0.7 * float_report["file_bytes"]["after"]


def session_ops(model: onnx.ModelProto, folder) -> set[str]:
    """The operators of the graph ONNX Runtime runs for `model` on CPU, all its optimizations on."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "session.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(folder / "session.onnx")).graph.node}


def test_int8_keeps_residual_sums_out_of_skip_layer_norm(export_cache, tmp_path):
    """The quantizer's shapes would let ONNX Runtime fuse Add and LayerNormalization (slower on CPU); the Sums stop it."""
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    result = compress_model(path, tiny_models.sample_inputs("bert", 64, 12, seed=3), keep=0.5, quantize="int8")
    ops = session_ops(result.model, tmp_path)
    assert "SkipLayerNormalization" not in ops and {"Sum", "LayerNormalization", "DynamicQuantizeMatMul"} <= ops
    assert result.report["quantization"]["fidelity"]["mean_cosine"] > 0.99


def test_int8_after_the_cpu_fusion_quantizes_attention(export_cache, tmp_path):
    """What `--optimize --quantize int8` ships when the fusion is kept: QAttention, residual sums still unfused."""
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    fused = fuse(load_model(path), skip_layer_norm=False)
    quantized = quantize_int8(fused)
    ops = session_ops(quantized, tmp_path)
    assert "QAttention" in ops and "SkipLayerNormalization" not in ops and "Sum" in ops
    feeds = tiny_models.sample_inputs("bert", 4, 12, seed=2)
    reference, output = (session(m).run(None, feeds)[0] for m in (fused, quantized))
    assert np.abs(output - reference).max() < 0.1 * np.abs(reference).max()


def test_an_int8_model_is_refused_before_pruning(tiny_folder, tmp_path):
    calib = str(tiny_folder / "calib.tsv")
    first = compress(
        str(tiny_folder / "model.onnx"), "--keep", "0.5", "--calib", calib, "--out", str(tmp_path / "q"),
        "--quantize", "int8",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = compress(
        str(tmp_path / "q" / "model.onnx"), "--keep", "0.5", "--calib", calib, "--out", str(tmp_path / "r")
    )
    line = _one_line(again)
    assert line.startswith("error: the model is already quantized") and "compress the float model, then" in line
    assert not (tmp_path / "r").exists()
    wrong = compress(str(tiny_folder / "model.onnx"), "--keep", "0.5", "--calib", calib, "--quantize", "int2")
    assert "unknown --quantize 'int2'; choose from int8, int4" in _one_line(wrong)


def test_quantize_int4_turns_every_weight_matrix_into_int4_blocks(tiny_folder, tmp_path):
    calib = str(tiny_folder / "calib.tsv")
    run = compress(
        str(tiny_folder / "model.onnx"), "--keep", "0.5", "--calib", calib, "--out", str(tmp_path / "q"),
        "--quantize", "int4",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "int4: mean cosine" in run.stdout
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    quantization = report["quantization"]
    assert (quantization["block_size"], quantization["symmetric"], quantization["accuracy_level"]) == (32, True, 4)
    assert 0.9 < quantization["fidelity"]["mean_cosine"] <= 1.0 + 1e-9
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "MatMul" not in ops or all(
        n.input[1] not in {t.name for t in model.graph.initializer} for n in model.graph.node if n.op_type == "MatMul"
    )
    assert ops.count("MatMulNBits") == quantization["matmul_nbits_nodes"] > 0


def _one_line(run: subprocess.CompletedProcess) -> str:
    """The only non-empty line on stderr of a run that exited with 2 and printed no traceback."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(lines) == 1, run.stderr
    return lines[0]
