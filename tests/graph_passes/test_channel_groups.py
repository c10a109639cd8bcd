"""The groups found in every export style of every architecture, and what blocks pruning."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tiny_models

from graph_passes import UnsupportedGraphError, analyze, load_model, require_prunable
from graph_passes.op_rules import RULES

STYLES = list(tiny_models.EXPORTS)
CASES = [(a, h, s) for a in tiny_models.ARCHS for h in tiny_models.HEADS for s in STYLES]


@pytest.mark.parametrize("arch,head,style", CASES, ids=["-".join(c) for c in CASES])
def test_finds_heads_ffn_and_hidden_groups(export_cache, arch, head, style):
    _, path = export_cache(arch, head, style)
    analysis = analyze(load_model(path))
    heads, ffn, hidden = analysis.by_kind("heads"), analysis.by_kind("ffn"), analysis.by_kind("hidden")
    assert [(g.layer, g.units, g.width) for g in heads] == [(0, 4, 16), (1, 4, 16)]
    assert [(g.layer, g.units) for g in ffn] == [(0, 96), (1, 96)]
    assert [(g.units, g.width) for g in hidden] == [(64, 1)]
    assert all(g.prunable for g in heads + ffn)
    for group in heads:
        assert len(group.writers) == 3 and len(group.readers) == 1  # Q, K, V in; output projection out
    if head == "classifier":
        assert hidden[0].prunable
        assert [g.units for g in analysis.by_kind("output")] == [3]
    else:
        assert hidden[0].interface == ["last_hidden_state"] and not hidden[0].prunable


def test_hidden_group_holds_embeddings_norms_and_every_projection(export_cache):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    analysis = analyze(load_model(path))
    hidden = analysis.group("hidden")
    params = {m.tensor for m in hidden.params}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm.weight"):
        assert any(name in p for p in params), name
    # 2 layers x (Q, K, V, FFN-in, pooler) read it; 2 x (attention out, FFN-out) write it
    assert len(hidden.readers) == 2 * 4 + 1 and len(hidden.writers) == 2 * 2
    norms = [m for m in hidden.params if "LayerNorm" in m.tensor]
    assert len(norms) == 2 * (1 + 2 * 2)  # scale and bias of the embedding norm and two per layer


def test_operator_without_rule_blocks_its_groups_and_names_the_node(export_cache, tmp_path):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    model = load_model(path)
    gelu = next(n for n in model.graph.node if n.op_type == "Erf")
    gelu.op_type = "Hardmax"  # same shape, no rule: the FFN it sits in must become unprunable
    analysis = analyze(model)
    ffn0 = analysis.group("ffn[0]")
    assert not ffn0.prunable
    assert ffn0.blockers[0].op_type == "Hardmax" and ffn0.blockers[0].node == gelu.name
    assert "Hardmax" not in RULES
    assert analysis.group("ffn[1]").prunable


def test_model_with_nothing_to_prune_is_refused():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedGraphError, match="no prunable channel group"):
        require_prunable(analyze(model))


def test_shared_zero_biases_do_not_couple_layers(export_cache):
    """TorchScript deduplicates equal initializers (all-zero biases): each use must still stand alone."""
    _, path = export_cache("bert", "classifier", "torchscript-opset17")
    model = load_model(path)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    initializers = {t.name for t in model.graph.initializer}
    assert any(uses.get(name, 0) > 1 for name in initializers if "bias" in name or "onnx::" in name)
    analysis = analyze(model)
    assert len(analysis.by_kind("heads")) == 2 and len(analysis.by_kind("ffn")) == 2
