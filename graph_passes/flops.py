"""Work of a model per token: twice the multiply-adds of its MatMul and Gemm nodes, on given inputs.

Sizes come from one ONNX Runtime run (`shape_probe`), so the projections and the attention products (Q K^T and the
weighted sum of V, which grow with the sequence) are both counted. Fused contrib operators (Attention,
MultiHeadAttention) are not: compare FLOPs of graphs that are both unfused. `compress`'s report and the benchmark
use this one definition.
"""

from __future__ import annotations

import numpy as np
import onnx

from graph_passes.shape_probe import probe_values


def matmul_flops_per_token(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tokens: int) -> float:
    """2 x multiply-adds of every MatMul and Gemm on `feeds`, divided by the `tokens` they hold."""
    values = probe_values(model, feeds)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        first = values[node.input[0]]
        inner = first.shape[0] if node.op_type == "Gemm" and _attribute(node, "transA") else first.shape[-1]
        total += 2 * int(np.prod(values[node.output[0]].shape)) * inner
    return total / tokens


def _attribute(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)
