"""Structure-keeping edits: truncation (also fed at an inner tensor), bias lookup, initializer replacement."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_models
from onnx import numpy_helper

from graph_passes import analyze, initializer_behind, linear_bias, load_model, replace_initializers, truncated


def run(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    return session.run(names, {k: v for k, v in feeds.items() if k in inputs})


@pytest.mark.parametrize("style", ["optimum-opset17", "torchscript-opset14", "dynamo-opset18"])
def test_a_model_cut_at_a_layer_input_computes_the_same_layer(export_cache, style):
    _, path = export_cache("bert", "classifier", style)
    analysis = analyze(load_model(path))
    heads, ffn = analysis.by_kind("heads"), analysis.by_kind("ffn")
    layer_input = analysis.linear(heads[1].writers[0]).activation
    tap = analysis.linear(ffn[1].readers[0]).activation
    feeds = tiny_models.sample_inputs("bert", 3, 9, seed=2)
    full_input, full_tap = run(truncated(analysis.model, [layer_input, tap]), [layer_input, tap], feeds)
    cut = truncated(analysis.model, [tap], {layer_input: np.float32})
    assert len(cut.graph.node) < len(analysis.model.graph.node) / 2 + 10
    (cut_tap,) = run(cut, [tap], {**feeds, layer_input: full_input})
    assert np.abs(cut_tap - full_tap).max() < 1e-5


def test_bias_is_found_through_identity_copies_and_replaced_at_its_source(export_cache):
    _, path = export_cache("bert", "classifier", "torchscript-opset14")
    analysis = analyze(load_model(path))
    model = analysis.model
    weight = analysis.by_kind("ffn")[0].readers[0]
    bias = linear_bias(model, weight)
    source = initializer_behind(model, bias)
    assert source is not None
    replace_initializers(model, {weight: np.zeros((96, 64)), bias: np.full(64, 0.5)})
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert values[weight].dtype == np.float32 and not values[weight].any()
    assert np.all(values[source] == 0.5)


def test_replacing_a_computed_tensor_is_refused(export_cache):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    model = analyze(load_model(path)).model
    computed = next(n.output[0] for n in model.graph.node if n.op_type == "MatMul")
    with pytest.raises(KeyError, match="is not an initializer"):
        replace_initializers(model, {computed: np.zeros(3)})
