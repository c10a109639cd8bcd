"""The decoder speed benchmark's measures: weight bytes one decoding step reads, and the GenAI generation loop it
times, which must be the model's own greedy generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from bench.decoder_speed import weight_bytes_per_step
from bench.genai_speed import agreement, generation

GENAI = Path(__file__).parents[1] / "fixtures" / "genai"


def test_a_step_reads_every_projection_and_lm_head_and_one_embedding_row(decoder_cache):
    model, path = decoder_cache("qwen2")  # untied lm_head: the embedding table is read by a Gather only
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    counted = weight_bytes_per_step(onnx.load(str(path), load_external_data=False))
    assert counted == 4 * linear  # Q/K/V biases are added by Add nodes, not read by the MatMuls


def test_int4_weights_count_their_packed_bytes_and_scales():
    graph = onnx.load(str(GENAI / "llama-gqa-int4" / "model.onnx"), load_external_data=False)
    fp32 = onnx.load(str(GENAI / "llama-gqa-fp32" / "model.onnx"), load_external_data=False)
    assert 0 < weight_bytes_per_step(graph) < weight_bytes_per_step(fp32) / 4


def test_the_timed_genai_generation_is_the_models_greedy_generation():
    import onnxruntime_genai as og

    reference = np.load(GENAI / "llama-gqa-fp32" / "reference.npz")
    model = og.Model(str(GENAI / "llama-gqa-fp32"))
    ttft, steps, tokens = generation(model, reference["prompt"].tolist(), len(reference["tokens"]))
    assert tokens == reference["genai_tokens"].tolist()
    assert ttft > 0 and len(steps) == len(tokens) - 1
    assert agreement([tokens], [tokens[:2] + [-1] * (len(tokens) - 2)]) == 2 / len(tokens)
