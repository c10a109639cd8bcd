"""The tiny decoders and their torch pruning reference, which ONNX pruning of decoders will be compared against."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import tiny_decoders
import torch

TOLERANCE = 1e-4


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("family", tiny_decoders.FAMILIES)
def test_export_matches_torch_at_prefill_and_over_decoding_steps(decoder_cache, family):
    model, path = decoder_cache(family)
    ids = tiny_decoders.sample_ids(2, 9)
    expected = tiny_decoders.torch_steps(model, ids, prefill=6)
    got = tiny_decoders.onnx_steps(_session(path), ids, prefill=6)
    assert [g.shape for g in got] == [(2, 6, tiny_decoders.VOCAB)] + [(2, 1, tiny_decoders.VOCAB)] * 3
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, atol=TOLERANCE, rtol=0)


def _random_masks(units: int, seed: int) -> dict[int, np.ndarray]:
    """One mask per layer, each keeping at least one unit and dropping at least one."""
    rng = np.random.default_rng(seed)
    masks = {}
    for layer in range(tiny_decoders.LAYERS):
        mask = np.ones(units, dtype=bool)
        mask[rng.choice(units, size=int(rng.integers(1, units)), replace=False)] = False
        masks[layer] = mask
    return masks


def _head_units(model) -> int:
    """What a head mask ranges over: KV heads (each with its query heads) for grouped-query attention."""
    return model.config.n_head if model.config.model_type == "gpt2" else model.config.num_key_value_heads


def _zeroed(model, heads: dict[int, np.ndarray], ffn: dict[int, np.ndarray]):
    """The same pruning by zeroing the input columns of the output and down projections that read dropped units."""
    zeroed = copy.deepcopy(model)
    for index, block in enumerate(tiny_decoders._blocks(zeroed)):
        if model.config.model_type == "gpt2":
            head_dim = block.attn.head_dim
            columns = np.repeat(heads[index], head_dim)
            out, down = block.attn.c_proj.weight, block.mlp.c_proj.weight
            with torch.no_grad():
                out[~columns] = 0  # Conv1D weights are (in, out)
                down[~ffn[index]] = 0
            continue
        repeat = model.config.num_attention_heads // model.config.num_key_value_heads
        columns = np.repeat(np.repeat(heads[index], repeat), block.self_attn.head_dim)
        with torch.no_grad():
            block.self_attn.o_proj.weight[:, ~columns] = 0
            block.mlp.down_proj.weight[:, ~ffn[index]] = 0
    return zeroed


@pytest.mark.parametrize("family", tiny_decoders.FAMILIES)
def test_torch_pruning_equals_zeroing_the_dropped_units_and_keeps_its_cache_consistent(decoder_cache, family):
    model, _ = decoder_cache(family)
    heads, ffn = _random_masks(_head_units(model), seed=1), _random_masks(96, seed=2)
    pruned = tiny_decoders.torch_pruned(model, heads, ffn)
    ids = tiny_decoders.sample_ids(2, 9, seed=3)
    steps = tiny_decoders.torch_steps(pruned, ids, prefill=6)
    full = tiny_decoders.torch_steps(pruned, ids, prefill=9)[0]
    zeroed = tiny_decoders.torch_steps(_zeroed(model, heads, ffn), ids, prefill=9)[0]
    original = tiny_decoders.torch_steps(model, ids, prefill=9)[0]
    np.testing.assert_allclose(full, zeroed, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=TOLERANCE, rtol=0)
    assert np.abs(full - original).max() > 10 * TOLERANCE
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_torch_pruning_with_uniform_masks_updates_the_config(decoder_cache, family):
    model, _ = decoder_cache(family)
    units = _head_units(model)
    heads = {layer: np.arange(units) != layer for layer in range(tiny_decoders.LAYERS)}
    ffn = {layer: np.arange(96) % 4 != layer for layer in range(tiny_decoders.LAYERS)}
    before = model.config.to_dict()
    pruned = tiny_decoders.torch_pruned(model, heads, ffn)
    config = pruned.config
    if family == "gpt2":
        assert (config.n_head, config.n_inner) == (3, 72)
    else:
        assert (config.num_key_value_heads, config.num_attention_heads, config.intermediate_size) == (1, 2, 72)
    assert model.config.to_dict() == before
    all_kept = tiny_decoders.torch_pruned(model, {0: np.ones(units, bool)}, {1: np.ones(96, bool)})
    ids = tiny_decoders.sample_ids(1, 5)
    np.testing.assert_array_equal(
        tiny_decoders.torch_steps(all_kept, ids, 5)[0], tiny_decoders.torch_steps(model, ids, 5)[0]
    )
