"""Multiply-add work of a model per token: the FLOPs of its MatMul and Gemm nodes at a given sequence length.

Sizes come from one ONNX Runtime run (`graph_passes.shape_probe`), so projections and the attention products
(Q K^T and the weighted sum of V, which grow with the sequence) are both counted. Fused contrib operators (Attention,
MultiHeadAttention) are not counted: compare FLOPs of graphs that are both unfused.
"""

from __future__ import annotations

import numpy as np
import onnx

from bench.workload import feeds
from graph_passes.shape_probe import probe_values


def matmul_flops_per_token(model: onnx.ModelProto, seq: int) -> float:
    """2 x multiply-adds of every MatMul and Gemm, for one sequence of `seq` tokens, divided by `seq`."""
    values = probe_values(model, feeds(model, 1, seq))
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        first = values[node.input[0]]
        inner = first.shape[0] if node.op_type == "Gemm" and _attribute(node, "transA") else first.shape[-1]
        total += 2 * int(np.prod(values[node.output[0]].shape)) * inner
    return total / seq


def _attribute(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)
