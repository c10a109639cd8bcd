"""Nodes whose outputs nothing reads, removed with the initializers only they read.

ONNX Runtime runs every node of a graph, read or not: it does not remove a node because its output is unused. A
pruned graph keeps the shape arithmetic that spelled the old sizes when a new Concat spells the new ones (24 dead
Concats, with the Unsqueezes that fed only them, in minilm-sst2 at keep 0.4), and at batch 1 that work is a visible
part of a small model's run (BENCHMARKS.md, encoder speed at keep 0.4).
"""

from __future__ import annotations

import onnx

from graph_passes.model_io import drop_unread_initializers, subgraph_inputs


def drop_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove, in place, the nodes of the main graph that no graph output depends on, and the initializers nothing
    reads any more; return how many nodes went. Nodes with subgraphs count their subgraphs' outer reads."""
    graph = model.graph
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    needed: set[int] = set()
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        index = stack.pop()
        if index in needed:
            continue
        needed.add(index)
        node = graph.node[index]
        reads = [name for name in node.input if name] + sorted(_outer_reads(node))
        stack.extend(producer[name] for name in reads if name in producer)
    dropped = len(graph.node) - len(needed)
    if dropped:
        kept = [node for index, node in enumerate(graph.node) if index in needed]
        del graph.node[:]
        graph.node.extend(kept)
        drop_unread_initializers(graph)
    return dropped


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names that a node's subgraphs (If, Loop, Scan bodies) read, some of them from the graph around them."""
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return set()
    wrapper = onnx.GraphProto()
    wrapper.node.append(node)
    return subgraph_inputs(wrapper)
