"""FLOPs per token of a model on one benchmark sequence of `seq` tokens (the definition is `graph_passes.flops`)."""

from __future__ import annotations

import onnx

from bench.workload import feeds
from graph_passes.flops import matmul_flops_per_token as flops_on


def matmul_flops_per_token(model: onnx.ModelProto, seq: int) -> float:
    """2 x multiply-adds of every MatMul and Gemm, for one sequence of `seq` tokens, divided by `seq`."""
    return flops_on(model, feeds(model, 1, seq), seq)
