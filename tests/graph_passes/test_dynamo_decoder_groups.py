"""Decoders exported by `torch.onnx.export(dynamo=True)` with their KV cache (tests/tiny_decoders.py's export_dynamo):
the export runs as torch does at sizes other than the traced ones, and pruning it gives the torch reference's logits.

The dynamo graph differs from optimum's where the tool must follow it: the attention mask's length is a symbol of its
own (the shape probe gives it past + new entries), the mask is read by GatherND, and grouped-query attention repeats
each KV head by an Expand to a constant shape whose `[2]` is at once the KV head count, the repeat count and an
Unsqueeze axis. Llama runs in CI; the other families (an export of 10 to 25 s each) with `-m slow`."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tiny_decoders

from graph_passes import analyze, apply_masks, load_model

TOLERANCE = 1e-4
FAMILIES = [f if f == "llama" else pytest.param(f, marks=pytest.mark.slow) for f in tiny_decoders.FAMILIES]


def _session(model_or_path, optimize: bool = True) -> ort.InferenceSession:
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("family", FAMILIES)
def test_export_matches_torch_at_sizes_other_than_traced(dynamo_decoder_cache, family):
    """Traced at batch 2, 5 new tokens over a past of 3; run at batch 3 and 1, prefills of 7 and 1 (an empty past)."""
    model, path = dynamo_decoder_cache(family)
    session = _session(path)
    for batch, length, prefill in ((3, 10, 7), (1, 4, 1)):
        ids = tiny_decoders.sample_ids(batch, length, seed=length)
        expected = tiny_decoders.torch_steps(model, ids, prefill)
        for want, have in zip(expected, tiny_decoders.onnx_steps(session, ids, prefill), strict=True):
            np.testing.assert_allclose(have, want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_are_kv_groups_and_only_the_rotary_table_is_blocked(dynamo_decoder_cache, family):
    analysis = analyze(load_model(dynamo_decoder_cache(family)[1]))
    heads, ffn = analysis.by_kind("heads"), analysis.by_kind("ffn")
    units, width = (4, 16) if family == "gpt2" else (2, 32)
    assert [(g.layer, g.units, g.width, g.prunable) for g in heads] == [
        (0, units, width, True),
        (1, units, width, True),
    ]
    assert heads[1].cache == [
        f"{kind}.1.{part}" for kind in ("past_key_values", "present") for part in ("key", "value")
    ]
    assert [(g.units, g.prunable) for g in ffn] == [(96, True)] * 2
    assert analysis.group("hidden").prunable
    assert {b.op_type for b in analysis.unsupported} <= {"Concat"}  # cat(freqs, freqs), as in optimum's export


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_export_equals_torch_pruning_and_its_cache_is_self_consistent(dynamo_decoder_cache, family):
    model, path = dynamo_decoder_cache(family)
    analysis = analyze(load_model(path))
    masks, heads, ffn = tiny_decoders.random_masks(analysis, seed=7)
    pruned = apply_masks(analysis, masks)
    session = _session(pruned)
    ids = tiny_decoders.sample_ids(2, 9, seed=4)
    steps = tiny_decoders.onnx_steps(session, ids, prefill=6)
    expected = tiny_decoders.torch_steps(tiny_decoders.torch_pruned(model, heads, ffn), ids, prefill=6)
    for want, have in zip(expected, steps, strict=True):
        np.testing.assert_allclose(have, want, atol=TOLERANCE, rtol=0)
    (whole,) = tiny_decoders.onnx_steps(session, ids, prefill=9)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=TOLERANCE, rtol=0)
    declared = {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in [*pruned.graph.input, *pruned.graph.output]}
    for layer, mask in heads.items():
        for name in (f"past_key_values.{layer}.key", f"present.{layer}.value"):
            assert declared[name] == mask.sum()


@pytest.mark.parametrize("family", FAMILIES)
def test_all_kept_masks_reproduce_logits_and_presents(dynamo_decoder_cache, family):
    """Over a past of 4 tokens: the all-kept model gives the same logits and presents, bit for bit, as the graph runs
    unoptimized (pruning drops the stale value_info, after which ONNX Runtime may fuse GPT-2's graph differently,
    moving the last float bit)."""
    _, path = dynamo_decoder_cache(family)
    analysis = analyze(load_model(path))
    kept = apply_masks(analysis, {g.name: np.ones(g.units, dtype=bool) for g in analysis.groups})
    original, same = _session(path, optimize=False), _session(kept, optimize=False)
    rng = np.random.default_rng(5)
    feeds = {
        "input_ids": tiny_decoders.sample_ids(2, 3, seed=5),
        "attention_mask": np.ones((2, 7), dtype=np.int64),
        "position_ids": np.tile(np.arange(4, 7), (2, 1)),
    }
    caches = [i for i in original.get_inputs() if i.name.startswith("past_key_values")]
    feeds |= {i.name: rng.standard_normal((2, i.shape[1], 4, i.shape[3])).astype(np.float32) for i in caches}
    for a, b in zip(original.run(None, feeds), same.run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
