"""The numpy-built BERT-shaped encoder of the size benchmark, at a tiny size: its parameter count, and `compress`
running on it from the model file alone (inputs from the graph)."""

from __future__ import annotations

import numpy as np
import onnx

from bench.large_models import Shape, build
from compressor import compress
from graph_passes import analyze, load_model


def test_a_tiny_bert_shaped_model_has_its_counted_parameters_and_compresses(tmp_path):
    shape = Shape(layers=2, hidden=64, heads=4, ffn=96, vocab=100, positions=40)
    path = build(shape, tmp_path / "model.onnx")
    model = load_model(path)
    assert (tmp_path / "model.onnx.data").is_file()
    counted = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert counted == shape.parameters + 1  # the attention scale
    kinds = [(g.kind, g.units) for g in analyze(model).groups if g.prunable]
    assert kinds.count(("heads", 4)) == 2 and kinds.count(("ffn", 96)) == 2
    result = compress(path, keep=0.5, samples=16, max_length=16, allocation="uniform")  # half the heads in each
    assert [g["units_after"] for g in result.report["groups"] if g["kind"] == "heads"] == [2, 2]
    assert result.report["fidelity"]["mean_cosine"] > 0.5
