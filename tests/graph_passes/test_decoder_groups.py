"""Decoders with a KV cache: the channel analysis finds KV-head groups (each KV head with the query heads that read
it), SwiGLU or GELU FFN neurons and the hidden stream; pruning them gives the torch reference's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_decoders

from graph_passes import analyze, apply_masks

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def analyses(decoder_cache):
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = analyze(onnx.load(str(decoder_cache(family)[1])))
        return cache[family]

    return get


@pytest.mark.parametrize("family", tiny_decoders.FAMILIES)
def test_heads_are_kv_groups_and_the_cache_is_state_not_interface(analyses, family):
    analysis = analyses(family)
    heads, ffn = analysis.by_kind("heads"), analysis.by_kind("ffn")
    units, width = (4, 16) if family == "gpt2" else (2, 32)  # GQA: 2 KV heads, each read by 2 query heads of 16
    assert [(g.layer, g.units, g.width, g.prunable) for g in heads] == [
        (0, units, width, True),
        (1, units, width, True),
    ]
    assert heads[1].cache == [
        f"{kind}.1.{part}" for kind in ("past_key_values", "present") for part in ("key", "value")
    ]
    assert [(g.units, g.prunable, len(g.writers), len(g.readers)) for g in ffn] == [
        (96, True, 1 if family == "gpt2" else 2, 1)
    ] * 2
    assert all(not g.interface for g in heads + ffn)


@pytest.mark.parametrize("family", tiny_decoders.FAMILIES)
def test_pruned_decoder_equals_torch_pruning_at_prefill_and_over_decoding_steps(decoder_cache, analyses, family):
    model, _ = decoder_cache(family)
    analysis = analyses(family)
    masks, heads, ffn = tiny_decoders.random_masks(analysis, seed=7)
    pruned = apply_masks(analysis, masks)
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = tiny_decoders.sample_ids(2, 9, seed=4)
    expected = tiny_decoders.torch_steps(tiny_decoders.torch_pruned(model, heads, ffn), ids, prefill=6)
    for want, have in zip(expected, tiny_decoders.onnx_steps(session, ids, prefill=6), strict=True):
        np.testing.assert_allclose(have, want, atol=TOLERANCE, rtol=0)
    declared = {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in [*pruned.graph.input, *pruned.graph.output]}
    for layer, mask in heads.items():
        for name in (f"past_key_values.{layer}.key", f"present.{layer}.value"):
            assert declared[name] == mask.sum()


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_all_kept_masks_reproduce_logits_and_presents(decoder_cache, analyses, family):
    _, path = decoder_cache(family)
    analysis = analyses(family)
    kept = apply_masks(analysis, {g.name: np.ones(g.units, dtype=bool) for g in analysis.groups})
    ids = tiny_decoders.sample_ids(2, 5, seed=2)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    same = ort.InferenceSession(kept.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(5), (2, 1))}
    caches = [i for i in original.get_inputs() if i.name.startswith("past_key_values")]
    feeds |= {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32) for i in caches}
    for a, b in zip(original.run(None, feeds), same.run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_real_stories260k_heads_are_its_four_kv_groups_of_two_query_heads():
    folder = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "stories260k"
    if not (folder / "model.onnx").exists():
        pytest.skip(f"{folder} is absent here (.ci/run requires it, so CI always runs this)")
    analysis = analyze(onnx.load(str(folder / "model.onnx")))
    heads, ffn = analysis.by_kind("heads"), analysis.by_kind("ffn")
    assert [(g.units, g.width, g.prunable) for g in heads] == [(4, 16, True)] * 5
    assert [(g.units, g.prunable) for g in ffn] == [(172, True)] * 5
    masks = {g.name: np.arange(4) != 1 for g in heads} | {g.name: np.arange(172) % 5 != 0 for g in ffn}
    pruned = apply_masks(analysis, masks)
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    assert {tuple(i.shape) for i in session.get_inputs() if i.name.startswith("past")} == {
        ("batch_size", 3, "past_sequence_length", 8)
    }
    (logits,) = tiny_decoders.onnx_steps(session, np.array([[1, 403, 407, 261, 378]]), prefill=5)
    assert logits.shape == (1, 5, 512) and np.isfinite(logits).all()
