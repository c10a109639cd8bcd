"""What the comparison measures besides time: MatMul FLOPs, the unstructured baseline, int8 quantization."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from bench.flops import matmul_flops_per_token
from bench.unstructured_pruning import magnitude_zeroed
from bench.workload import feeds
from compressor.budget import encoder_matrices
from compressor.fidelity import session
from compressor.quantization import QuantizedInputError, quantize_int8
from graph_passes import analyze, load_model


def test_flops_per_token_count_projections_attention_and_head(tiny_folder):
    """Tiny BERT: hidden 64, FFN 96, 2 layers, 3 labels; per token at sequence S, each layer does Q, K, V, output
    (4 x 64 x 64), FFN (2 x 64 x 96) and attention (2 x S x 64) multiply-adds; pooler and classifier once per
    sequence."""
    seq = 16
    per_layer = 4 * 64 * 64 + 2 * 64 * 96 + 2 * seq * 64
    expected = 2 * (2 * per_layer) + 2 * (64 * 64 + 64 * 3) / seq
    assert matmul_flops_per_token(load_model(tiny_folder / "model.onnx"), seq) == pytest.approx(expected)


def test_unstructured_magnitude_zeroes_the_smallest_weights_of_each_encoder_matrix(tiny_folder):
    model = load_model(tiny_folder / "model.onnx")
    zeroed = magnitude_zeroed(model, 0.25)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in zeroed.graph.initializer}
    matrices = {m.weight for m in encoder_matrices(analyze(model))}
    assert len(matrices) == 12
    for name in matrices:
        weight, pruned = before[name], after[name]
        assert pruned.shape == weight.shape and np.mean(pruned == 0) == pytest.approx(0.75, abs=0.01)
        kept = pruned != 0
        assert np.abs(weight[kept]).min() >= np.abs(weight[~kept]).max()
    for name in set(before) - matrices:
        assert np.array_equal(before[name], after[name])
    outputs = session(zeroed).run(None, feeds(zeroed, 2, 8))[0]
    assert outputs.shape == (2, 3) and np.isfinite(outputs).all()


def test_int8_follows_the_float_model_and_refuses_to_quantize_twice(tiny_folder):
    model = load_model(tiny_folder / "model.onnx")
    int8 = quantize_int8(model)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & {n.op_type for n in int8.graph.node}
    batch = feeds(model, 8, 12, seed=3)
    reference, quantized = (session(m).run(None, batch)[0] for m in (model, int8))
    cosine = (
        np.sum(reference * quantized, axis=1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(quantized, axis=1)
    )
    assert cosine.min() > 0.98
    assert len(int8.SerializeToString()) < 0.6 * len(model.SerializeToString())
    with pytest.raises(QuantizedInputError, match="already quantized .*compress the float model, then quantize"):
        quantize_int8(int8)
