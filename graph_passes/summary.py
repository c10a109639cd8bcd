"""A plain-data description of an analysis: what `compress inspect` prints and `--json` emits."""

from __future__ import annotations

import numpy as np

from graph_passes.channel_groups import ChannelGroup, GraphAnalysis


def summarize(analysis: GraphAnalysis) -> dict:
    blocked_nodes = {b for g in analysis.groups for b in g.blockers} | set(analysis.unsupported)
    return {
        "groups": [_group(analysis, g) for g in analysis.groups],
        "cannot_prune_through": [
            {"node": b.node, "op_type": b.op_type, "reason": b.reason}
            for b in sorted(blocked_nodes, key=lambda b: (b.node, b.reason))
        ],
    }


def _group(analysis: GraphAnalysis, group: ChannelGroup) -> dict:
    weights = set(group.readers) | set(group.writers)
    user = _weight_users(analysis)
    return {
        "name": group.name,
        "kind": group.kind,
        "layer": group.layer,
        "size": group.size,
        "units": group.units,
        "unit_width": group.width,
        "prunable": group.prunable,
        "parameters": int(sum(np.prod(analysis.values[t].shape) for t in {m.tensor for m in group.params})),
        "writers": [user.get(w, w) for w in group.writers],
        "readers": [user.get(w, w) for w in group.readers],
        "other_parameters": sorted({m.tensor for m in group.params} - weights),
        "interface": group.interface,
        "blockers": [{"node": b.node, "op_type": b.op_type, "reason": b.reason} for b in group.blockers],
    }


def _weight_users(analysis: GraphAnalysis) -> dict[str, str]:
    """The node that applies each weight: exporters often leave weights anonymous (`onnx::MatMul_746`)."""
    users: dict[str, str] = {}
    for node in analysis.model.graph.node:
        for name in node.input:
            users.setdefault(name, node.name or name)
    return users
