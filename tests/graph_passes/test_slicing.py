"""Masks applied to exported graphs compute what the same pruning computes in torch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_models
import torch_reference

from graph_passes import MaskError, UnsupportedGraphError, analyze, apply_masks, load_model

STYLES = list(tiny_models.EXPORTS)
CASES = [(a, h, s) for a in tiny_models.ARCHS for h in tiny_models.HEADS for s in STYLES]
IDS = ["-".join(c) for c in CASES]
SHAPES = [(1, 5), (1, 12), (3, 5), (3, 12)]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def random_masks(analysis, seed: int, hidden: bool) -> dict[str, np.ndarray]:
    """Different head counts per layer (3 kept in one layer, 2 in the other), random FFN and hidden masks."""
    rng = np.random.default_rng(seed)
    masks = {}
    for layer, group in enumerate(analysis.by_kind("heads")):
        keep = rng.choice(group.units, size=3 if layer % 2 == 0 else 2, replace=False)
        masks[group.name] = np.isin(np.arange(group.units), keep)
    for group in analysis.by_kind("ffn"):
        masks[group.name] = rng.random(group.units) < 0.5
    if hidden:
        masks["hidden"] = rng.random(analysis.group("hidden").units) < 0.6
    return masks


def torch_reference_outputs(model, masks, feeds):
    heads = {int(k[6:-1]): v for k, v in masks.items() if k.startswith("heads[")}
    ffn = {int(k[4:-1]): v for k, v in masks.items() if k.startswith("ffn[")}
    pruned = torch_reference.prune(model, heads, ffn, masks.get("hidden"))
    return tiny_models.torch_outputs(pruned, feeds)


@pytest.mark.parametrize("arch,head,style", CASES, ids=IDS)
def test_all_kept_masks_reproduce_the_original(export_cache, arch, head, style):
    _, path = export_cache(arch, head, style)
    original = load_model(path)
    analysis = analyze(original)
    masks = {g.name: np.ones(g.units, dtype=bool) for g in analysis.groups}
    pruned = apply_masks(analysis, masks)
    for batch, seq in SHAPES:
        feeds = tiny_models.sample_inputs(arch, batch, seq)
        assert np.abs(run(pruned, feeds) - run(original, feeds)).max() <= 1e-5


@pytest.mark.parametrize("arch,head,style", CASES, ids=IDS)
def test_head_and_ffn_masks_match_torch_pruning(export_cache, arch, head, style):
    model, path = export_cache(arch, head, style)
    analysis = analyze(load_model(path))
    masks = random_masks(analysis, seed=len(style), hidden=False)
    pruned = apply_masks(analysis, masks)
    for batch, seq in SHAPES:
        feeds = tiny_models.sample_inputs(arch, batch, seq, seed=batch)
        expected = torch_reference_outputs(model, masks, feeds)
        assert np.abs(run(pruned, feeds) - expected).max() <= 1e-4


@pytest.mark.parametrize("arch,head,style", CASES, ids=IDS)
def test_hidden_masks_match_the_sliced_computation(export_cache, arch, head, style):
    model, path = export_cache(arch, head, style)
    analysis = analyze(load_model(path))
    masks = random_masks(analysis, seed=7, hidden=True)
    pruned = apply_masks(analysis, masks, allow_interface_change=head == "encoder")
    kept = int(masks["hidden"].sum())
    sizes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    members = [m for m in analysis.group("hidden").params if m.tensor in sizes]
    assert len(members) >= len(analysis.group("hidden").params) // 2
    assert all(sizes[m.tensor][m.axis] == kept for m in members)
    for batch, seq in SHAPES:
        feeds = tiny_models.sample_inputs(arch, batch, seq, seed=batch)
        expected = torch_reference_outputs(model, masks, feeds)
        assert np.abs(run(pruned, feeds) - expected).max() <= 1e-4


def test_pruned_model_is_smaller_and_reanalyzes_to_the_kept_sizes(export_cache):
    _, path = export_cache("bert", "classifier", "dynamo-opset18")
    analysis = analyze(load_model(path))
    masks = random_masks(analysis, seed=3, hidden=True)
    pruned = apply_masks(analysis, masks)
    again = analyze(pruned)
    assert [g.units for g in again.by_kind("heads")] == [3, 2]
    assert again.group("hidden").units == masks["hidden"].sum()
    assert pruned.ByteSize() < analysis.model.ByteSize() * 0.8


def test_interface_group_needs_consent(export_cache):
    _, path = export_cache("bert", "encoder", "optimum-opset17")
    analysis = analyze(load_model(path))
    mask = np.arange(64) % 2 == 0
    with pytest.raises(UnsupportedGraphError, match="last_hidden_state"):
        apply_masks(analysis, {"hidden": mask})


@pytest.mark.parametrize(
    "name,mask,message",
    [
        ("heads[0]", np.ones(5, dtype=bool), "has shape \\(5,\\); the group has 4 units"),
        ("heads[0]", np.zeros(4, dtype=bool), "keeps no unit"),
        ("heads[0]", np.array([0.5, 1, 1, 1]), "boolean"),
        ("heads[9]", np.ones(4, dtype=bool), "no group named 'heads\\[9\\]'"),
    ],
)
def test_bad_masks_are_refused(export_cache, name, mask, message):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    with pytest.raises(MaskError, match=message):
        apply_masks(analyze(load_model(path)), {name: mask})


def test_blocked_group_refuses_a_mask_and_names_the_node(export_cache):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    model = load_model(path)
    node = next(n for n in model.graph.node if n.op_type == "Erf")
    node.op_type = "Hardmax"
    analysis = analyze(model)
    with pytest.raises(UnsupportedGraphError, match=f"Hardmax node '{node.name}'"):
        apply_masks(analysis, {"ffn[0]": np.arange(96) < 10})


def test_input_model_is_not_modified(export_cache):
    _, path = export_cache("roberta", "classifier", "torchscript-opset14")
    before = path.read_bytes()
    model = load_model(path)
    snapshot = model.SerializeToString()
    analysis = analyze(model)
    apply_masks(analysis, random_masks(analysis, seed=1, hidden=True))
    assert model.SerializeToString() == snapshot and path.read_bytes() == before


def test_shape_targets_shared_between_layers_get_per_layer_sizes(export_cache):
    """One static [0, 0, 4, 16] target for every head split and one [0, 0, 64] for every merge, shared by all
    layers: pruning layers to different head counts must give each Reshape its own target."""
    from graph_passes.model_io import constants_to_initializers
    from graph_passes.shape_probe import probe_values

    model, path = export_cache("bert", "classifier", "optimum-opset17")
    shared = constants_to_initializers(load_model(path))
    values = probe_values(shared)
    targets = {4: np.array([0, 0, 4, 16], dtype=np.int64), 3: np.array([0, 0, 64], dtype=np.int64)}
    rewired = 0
    for node in shared.graph.node:
        if (
            node.op_type == "Reshape"
            and values[node.input[0]].ndim in (3, 4)
            and values[node.output[0]].ndim in targets
        ):
            rank = values[node.output[0]].ndim
            if (rank == 4 and values[node.output[0]].shape[2:] == (4, 16)) or (
                rank == 3 and values[node.input[0]].ndim == 4
            ):
                node.input[1] = f"shared_target_{rank}"
                rewired += 1
    assert rewired == 2 * 4  # Q, K, V splits and one merge per layer
    shared.graph.initializer.extend(onnx.numpy_helper.from_array(t, f"shared_target_{r}") for r, t in targets.items())
    analysis = analyze(shared)
    masks = random_masks(analysis, seed=9, hidden=False)
    pruned = apply_masks(analysis, masks)
    for batch, seq in SHAPES:
        feeds = tiny_models.sample_inputs("bert", batch, seq, seed=batch)
        assert np.abs(run(pruned, feeds) - torch_reference_outputs(model, masks, feeds)).max() <= 1e-4
    assert not pruned.graph.value_info
