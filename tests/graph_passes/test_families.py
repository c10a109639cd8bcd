"""Encoder families beyond BERT: their structures (fused projections cut into sections, gated FFNs, rotary
positions, shared layer weights, relative positions per head, patch embeddings) prune to exactly the torch pruning."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_families
import torch_reference

from graph_passes import analyze, apply_masks, load_model

SHAPES = [(1, 5), (3, 12), (2, 20)]  # 20 tokens exceed ModernBERT's local attention window of 8


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def random_masks(analysis, seed: int) -> dict[str, np.ndarray]:
    """3 heads kept in even layers, 2 in odd ones; about half of each FFN."""
    rng = np.random.default_rng(seed)
    masks = {}
    for layer, group in enumerate(g for g in analysis.by_kind("heads") if g.prunable):
        keep = rng.choice(group.units, size=3 if layer % 2 == 0 else 2, replace=False)
        masks[group.name] = np.isin(np.arange(group.units), keep)
    for group in analysis.by_kind("ffn"):
        masks[group.name] = rng.random(group.units) < 0.5
    return masks


def reference(model, masks, feeds) -> np.ndarray:
    heads = {int(k[6:-1]): v for k, v in masks.items() if k.startswith("heads[")}
    ffn = {int(k[4:-1]): v for k, v in masks.items() if k.startswith("ffn[")}
    return tiny_families.torch_outputs(torch_reference.prune(model, heads, ffn), feeds)


def feeds_for(family: str):
    return [tiny_families.sample_inputs(family, batch, seq, seed=batch) for batch, seq in SHAPES]


@pytest.mark.parametrize(
    "family,heads,ffn", [("modernbert", 3, 3), ("albert", 1, 1), ("vit", 2, 2), ("deberta", 2, 2), ("deberta-v3", 2, 2)]
)
def test_family_has_prunable_heads_and_ffn_per_layer(family_cache, family, heads, ffn):
    _, path = family_cache(family)
    analysis = analyze(load_model(path))
    assert [g.units for g in analysis.by_kind("heads") if g.prunable] == [4] * heads
    assert all(g.blockers for g in analysis.by_kind("heads") if not g.prunable)
    assert [g.units for g in analysis.by_kind("ffn") if g.prunable] == [96] * ffn


@pytest.mark.parametrize("family", tiny_families.FAMILIES)
def test_all_kept_masks_reproduce_the_original(family_cache, family):
    model, path = family_cache(family)
    analysis = analyze(load_model(path))
    pruned = apply_masks(analysis, {g.name: np.ones(g.units, dtype=bool) for g in analysis.groups})
    for feeds in feeds_for(family):
        assert np.abs(run(pruned, feeds) - tiny_families.torch_outputs(model, feeds)).max() <= 1e-4


@pytest.mark.parametrize("family", tiny_families.FAMILIES)
def test_head_and_ffn_masks_match_torch_pruning(family_cache, family):
    model, path = family_cache(family)
    analysis = analyze(load_model(path))
    masks = random_masks(analysis, seed=4)
    pruned = apply_masks(analysis, masks)
    for feeds in feeds_for(family):
        assert np.abs(run(pruned, feeds) - reference(model, masks, feeds)).max() <= 1e-4


def test_weights_shared_by_every_layer_form_one_group_with_a_use_per_layer(family_cache):
    """ALBERT applies one layer's matrices at every depth: one heads and one FFN group, each applied 3 times."""
    _, path = family_cache("albert")
    analysis = analyze(load_model(path))
    for group in analysis.by_kind("heads") + analysis.by_kind("ffn"):
        assert all(len(analysis.uses(w)) == 3 for w in group.readers + group.writers)
    assert len(analysis.by_kind("hidden")) == 1 and analysis.group("hidden").units == 64


def test_image_inputs_are_probed_at_the_size_the_graph_tells(family_cache):
    """ViT's pixel_values (batch, channels, height, width all dynamic): 3 channels from the Conv, 32 pixels square
    from the position embeddings (16 patches of 8 pixels and a class token)."""
    from graph_passes.shape_probe import dummy_inputs, image_sizes

    _, path = family_cache("vit")
    model = load_model(path)
    assert image_sizes(model)[0] == tiny_families.IMAGE
    assert dummy_inputs(model, image_sizes(model)[0])["pixel_values"].shape[1:] == (3, 32, 32)
    analysis = analyze(model)
    assert analysis.values["pixel_values"].shape[1:] == (3, 32, 32)
    assert analysis.group("hidden").prunable


def test_relative_position_projections_shrink_with_their_heads(family_cache):
    """DeBERTa-v2 lays attention out as (batch x heads, ...) and tiles the relative position projections,
    (heads, ...), to it, repeating them (batch x heads) // heads times: pos_key_proj and pos_query_proj write the
    heads of their layer, and the divisor (the head count) is rewritten, so the batch stays the batch."""
    _, path = family_cache("deberta")
    analysis = analyze(load_model(path))
    for layer, group in enumerate(analysis.by_kind("heads")):
        biases = {m.tensor for m in group.params if m.tensor.endswith("proj.bias")}
        projections = ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj")
        assert biases == {f"deberta.encoder.layer.{layer}.attention.self.{name}.bias" for name in projections}
        assert len(group.writers) == 5
    divisors = [analysis.model.graph.node[index] for index, _, _ in analysis.dims.spelled]
    assert divisors and {node.op_type for node in divisors} == {"Div"}
    assert all(analysis.values[node.input[1]] == 4 for node in divisors)


def test_projections_shared_by_content_and_positions_are_one_weight_applied_twice(family_cache):
    """DeBERTa-v3 (share_att_key) projects the relative positions with the content key and query projections: one
    head group per layer, whose key and query weights each have two uses."""
    _, path = family_cache("deberta-v3")
    analysis = analyze(load_model(path))
    for group in analysis.by_kind("heads"):
        assert sorted(len(analysis.uses(w)) for w in group.writers) == [1, 2, 2]


def prunable_counts(analysis) -> tuple[list[int], list[int]]:
    return [g.units for g in analysis.by_kind("heads") if g.prunable], [
        g.units for g in analysis.by_kind("ffn") if g.prunable
    ]


@pytest.mark.parametrize("family", tiny_families.FAMILIES)
def test_fused_forms_have_the_plain_groups_and_prune_to_the_torch_pruning(family_cache, family):
    """ONNX Runtime's transformer optimizer (`--optimize`) fuses LayerNorms, Gelus and, for ALBERT, the attention
    into contrib ops: the fused graph keeps the plain export's head and FFN groups and prunes exactly."""
    from compressor.optimization import fuse

    model, path = family_cache(family)
    fused = analyze(fuse(load_model(path)))
    assert any(node.domain == "com.microsoft" for node in fused.model.graph.node)
    assert prunable_counts(fused) == prunable_counts(analyze(load_model(path)))
    masks = random_masks(fused, seed=5)
    pruned = apply_masks(fused, masks)
    for feeds in feeds_for(family)[:2]:
        assert np.abs(run(pruned, feeds) - reference(model, masks, feeds)).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", ["modernbert", "vit"])
def test_dynamo_exports_prune_to_the_torch_pruning(family_cache, tmp_path, family):
    """torch.onnx.export(dynamo=True): ModernBERT's Q, K, V are Slices of single entries of (3, heads, head_dim),
    unrolled into sections like a Split."""
    model, _ = family_cache(family)
    analysis = analyze(load_model(tiny_families.export_dynamo(model, family, tmp_path / "model.onnx")))
    assert all(g.prunable for g in analysis.by_kind("heads") + analysis.by_kind("ffn"))
    masks = random_masks(analysis, seed=4)
    pruned = apply_masks(analysis, masks)
    for feeds in feeds_for(family)[:2]:
        assert np.abs(run(pruned, feeds) - reference(model, masks, feeds)).max() <= 1e-4


@pytest.mark.slow
def test_dynamo_albert_has_a_copy_of_the_shared_weights_per_layer(family_cache, tmp_path):
    """The dynamo exporter writes ALBERT's shared layer once per depth (equal copies): a group per layer, and a
    pruned copy keeps its own name even when it equals another (recovery refits weights by name)."""
    model, _ = family_cache("albert")
    analysis = analyze(load_model(tiny_families.export_dynamo(model, "albert", tmp_path / "model.onnx")))
    assert prunable_counts(analysis) == ([4, 4, 4], [96, 96, 96])
    heads, ffn = np.array([True, False, True, True]), np.arange(96) % 3 != 0
    masks = {g.name: heads for g in analysis.by_kind("heads")} | {g.name: ffn for g in analysis.by_kind("ffn")}
    pruned = apply_masks(analysis, masks)
    names = {t.name for t in pruned.graph.initializer}
    assert all(w in names for g in analysis.groups for w in g.readers + g.writers)
    for feeds in feeds_for("albert")[:2]:
        assert np.abs(run(pruned, feeds) - reference(model, {"heads[0]": heads, "ffn[0]": ffn}, feeds)).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", ["deberta", "deberta-v3"])
def test_dynamo_deberta_keeps_the_same_heads_in_every_layer(family_cache, tmp_path, family):
    """The dynamo exporter computes the relative position indices once, sized heads x batch (a Mul by the head
    count), and gathers every layer's scores with them: all layers share one head group, and the count is
    rewritten."""
    model, _ = family_cache(family)
    analysis = analyze(load_model(tiny_families.export_dynamo(model, family, tmp_path / "model.onnx")))
    assert prunable_counts(analysis) == ([4], [96, 96])
    heads = np.array([True, False, True, True])
    pruned = apply_masks(analysis, {"heads[0]": heads})
    for feeds in feeds_for(family)[:2]:
        expected = tiny_families.torch_outputs(torch_reference.prune(model, {0: heads, 1: heads}), feeds)
        assert np.abs(run(pruned, feeds) - expected).max() <= 1e-4
