"""Graphs fused by ONNX Runtime's transformer optimizer (Attention with packed Q, K, V, SkipLayerNormalization,
EmbedLayerNormalization, BiasGelu): the same groups as the plain export, and pruning commutes with fusing."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models

from compressor import compress
from compressor.fidelity import session
from compressor.optimization import fuse
from graph_passes import analyze, apply_masks, load_model

MASKS = {
    "heads[0]": np.array([True, False, True, False]),
    "heads[1]": np.array([False, True, False, False]),
    "ffn[0]": np.arange(96) % 2 == 0,
    "ffn[1]": np.arange(96) % 3 == 0,
    "hidden": np.arange(64) % 4 != 1,
}


@pytest.fixture(scope="module")
def fused_pairs(export_cache):
    """(plain analysis, fused analysis) per architecture, from the optimum export."""
    found = {}
    for arch in ("bert", "roberta", "distilbert"):
        plain = load_model(export_cache(arch, "classifier", "optimum-opset17")[1])
        found[arch] = analyze(plain), analyze(fuse(plain))
    return found


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_fused_graph_has_the_plain_graphs_groups_and_fused_ops(fused_pairs, arch):
    plain, fused = fused_pairs[arch]
    ops = {n.op_type for n in fused.model.graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops
    assert ("EmbedLayerNormalization" in ops) == (arch != "roberta")  # RoBERTa's position ids are not fused
    assert fused.unsupported == []
    kinds = ("hidden", "heads", "ffn", "output")  # fused DistilBERT keeps a spare embedding Gather: one more dense
    shape = {(g.name, g.units, g.width, g.prunable) for g in fused.groups if g.kind in kinds}
    assert shape == {(g.name, g.units, g.width, g.prunable) for g in plain.groups if g.kind in kinds}


@pytest.mark.parametrize("names", [["heads[0]", "heads[1]"], ["ffn[0]", "ffn[1]"], ["hidden"], list(MASKS)])
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_fusing_then_pruning_equals_pruning_then_fusing(fused_pairs, arch, names):
    plain, fused = fused_pairs[arch]
    masks = {name: MASKS[name] for name in names}
    pruned_fused = apply_masks(fused, masks)
    counts = sorted(a.i for n in pruned_fused.graph.node for a in n.attribute if a.name == "num_heads")
    assert counts == ([1, 2] if "heads[0]" in masks else [4, 4])
    feeds = tiny_models.sample_inputs(arch, 4, 12, seed=2)
    first = session(pruned_fused).run(None, feeds)[0]
    second = session(fuse(apply_masks(plain, masks))).run(None, feeds)[0]
    assert np.allclose(first, second, atol=1e-4)


def test_compress_scores_and_refits_a_fused_graph(export_cache):
    plain = load_model(export_cache("bert", "classifier", "optimum-opset17")[1])
    data = tiny_models.sample_inputs("bert", 64, 12, seed=3)
    result = compress(fuse(plain), data, keep=0.5)
    assert result.report["keep_achieved"] == pytest.approx(0.5, abs=0.01)
    assert result.report["recovery"]["kept"]
    refit = [(p["layer"], p["kind"]) for p in result.report["recovery"]["projections"]]
    # each layer's attention output and FFN down, and its FFN up (stream refits); the packed Q, K, V inside the
    # fused Attention are no tensors of the graph, so they are not refit
    assert sorted(refit) == sorted((layer, kind) for layer in (0, 1) for kind in ("heads", "ffn", "stream"))
    assert result.report["fidelity"]["mean_cosine"] > 0.9
    assert "Attention" in {n.op_type for n in result.model.graph.node}
