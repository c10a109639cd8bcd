"""The numpy-built models of the size benchmark, at a tiny size: the BERT-shaped encoder's parameter count and
`compress` running on it from the model file alone (inputs from the graph); the Llama-shaped decoder against
transformers' Llama with the same weights; the timing of one decoder layer."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers

from bench.large_models import DecoderShape, Shape, build, build_decoder
from bench.size import layer_speed
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


DECODER = DecoderShape(layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=120, positions=64)


def test_a_tiny_llama_shaped_decoder_computes_what_transformers_llama_does(tmp_path):
    """The numpy-built decoder, its weights loaded into transformers' LlamaForCausalLM, gives the same logits on a
    left-padded batch; it has its counted parameters and compresses by whole KV groups."""
    path = build_decoder(DECODER, tmp_path / "model.onnx")
    model = load_model(path)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    config = transformers.LlamaConfig(
        vocab_size=DECODER.vocab, hidden_size=DECODER.hidden, intermediate_size=DECODER.ffn,
        num_hidden_layers=DECODER.layers, num_attention_heads=DECODER.heads, num_key_value_heads=DECODER.kv_heads,
        max_position_embeddings=DECODER.positions, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    )  # fmt: skip
    llama = transformers.LlamaForCausalLM(config).eval()
    as_stored = {name: name.endswith("norm.weight") or "embed" in name for name in llama.state_dict()}  # else (in, out)
    as_torch = {
        name: torch.tensor(np.ascontiguousarray(weights[name] if stored else weights[name].T))
        for name, stored in as_stored.items()
    }
    llama.load_state_dict(as_torch)
    assert sum(int(np.prod(v.shape)) for v in as_torch.values()) == DECODER.parameters
    ids = np.random.default_rng(0).integers(0, DECODER.vocab, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    with torch.no_grad():
        expected = llama(**{name: torch.tensor(value) for name, value in inputs.items()}).logits.numpy()
    empty = np.zeros((2, DECODER.kv_heads, 0, DECODER.head_dim), np.float32)
    caches = {f"past_key_values.{i}.{kind}": empty for i in range(DECODER.layers) for kind in ("key", "value")}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {**inputs, **caches})[0]
    np.testing.assert_allclose(logits[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(logits[1, 3:], expected[1, 3:], atol=1e-5)  # the padded positions are not compared
    result = compress(path, keep=0.5, samples=8, max_length=16)
    assert [g["units_after"] for g in result.report["groups"] if g["kind"] == "heads"] == [1, 1]


def test_one_layer_is_timed_with_its_flops():
    speed = layer_speed(DECODER, batch=2, tokens=16, runs=1)
    assert speed["tokens_per_second"] > 0 and speed["gflops_per_second"] > 0
