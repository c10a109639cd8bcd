"""The peer to beat: onnxsim's structured pruning at its best, for the comparison in BENCHMARKS.md.

On a plain export onnxsim's structured pruning removes almost nothing, so its best pipeline is used: ONNX Runtime's
transformer optimizer fuses the graph first, then onnxsim removes attention heads (Wanda-scored, inside the fused
Attention nodes) and FFN neurons (structured Wanda), and refits the surviving MatMul layers by ridge regression
(`apply_pruning_finetune`). A bench-only dependency: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from bench.workload import parameter_count


@dataclass
class OnnxsimResult:
    model: onnx.ModelProto
    keep_achieved: float  # fraction of the encoder's prunable weights left, from the parameter counts
    seconds: float


def onnxsim_structured(
    model_path: str, batches: Sequence[dict[str, np.ndarray]], keep: float, encoder_weights: int
) -> OnnxsimResult:
    """Fuse, prune heads and FFN neurons to `keep` each, refit; `encoder_weights` counts the prunable weights.

    The kept fraction comes from parameter counts (removed biases count as removed weights)."""
    from onnxruntime.transformers.optimizer import optimize_model
    from onnxsim.finetune import apply_pruning_finetune
    from onnxsim.pruning import apply_attention_head_wanda_pruning, apply_structured_wanda_pruning

    start = time.perf_counter()
    fused = optimize_model(model_path, model_type="bert", num_heads=0, hidden_size=0).model
    pruned = apply_attention_head_wanda_pruning(fused, calibration_data=list(batches), sparsity=1 - keep)
    pruned = apply_structured_wanda_pruning(pruned, calibration_data=list(batches), sparsity=1 - keep)
    refit = apply_pruning_finetune(fused, pruned, calibration_data=list(batches))
    removed = parameter_count(fused) - parameter_count(refit)
    return OnnxsimResult(refit, (encoder_weights - removed) / encoder_weights, time.perf_counter() - start)
