"""`compress --optimize`: ONNX Runtime's transformer fusion on the pruned model, kept only when it pays.

The fusion (`onnxruntime.transformers.optimizer.optimize_model`, model type bert, which also covers RoBERTa and
DistilBERT) reads each layer's head count from its own Reshape targets (num_heads=0, hidden_size=0), so layers
pruned to different head counts fuse alike. The fused model is kept only if it passes validation, gives the same
outputs as the unfused one on calibration inputs, and is not slower on them (CPU, interleaved timing).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compressor.calibration import Calibration
from compressor.progress import quiet_loggers
from compressor.timing import interleaved, timing_options
from graph_passes.sessions import cpu_session
from user_errors import first_line

TOLERANCE = 1e-3  # largest output difference, relative to the largest output magnitude
WARMUP, RUNS = 2, 10


def fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as folder, quiet_loggers("onnxruntime.transformers", None):
        path = Path(folder) / "model.onnx"
        onnx.save(model, str(path))
        return optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0).model


def optimize(model: onnx.ModelProto, data: Calibration, batch_size: int) -> tuple[onnx.ModelProto, dict]:
    """(the model to ship, what was measured): the fused model when it agrees with `model` and is not slower."""
    fused = fuse(model)
    fused_ops = {op: n for op, n in Counter(n.op_type for n in fused.graph.node).items() if op in _FUSED_OPS}
    feeds = next(data.batches(data.by_length(range(len(data)))[-batch_size:], batch_size))
    report: dict = {"applied": False, "fused_ops": fused_ops, "batch": batch_size, "seq": _seq(feeds)}
    try:
        runs = [_timing_session(m) for m in (model, fused)]
        outputs = [run.run(None, feeds)[0] for run in runs]
    except Exception as exc:  # ORT raises several types for one cause: the fused graph does not run
        return model, {**report, "reason": f"the fused model does not run: {first_line(exc)}"}
    difference = float(np.abs(outputs[0] - outputs[1]).max() / max(np.abs(outputs[0]).max(), 1e-12))
    report["output_difference"] = difference
    if not fused_ops:
        return model, {**report, "reason": "nothing was fused"}
    if not difference <= TOLERANCE:
        return model, {**report, "reason": f"fused outputs differ by {difference:.2g} (relative)"}
    timings = interleaved(runs, [feeds, feeds], batch_size, WARMUP, RUNS)
    latency = [timing.percentile(50) * 1e3 for timing in timings]
    report["p50_ms"] = {"unfused": round(latency[0], 3), "fused": round(latency[1], 3)}
    if latency[1] > latency[0]:
        return model, {**report, "reason": "the fused model is slower on calibration inputs (CPU)"}
    return fused, {**report, "applied": True, "reason": "validated, same outputs, not slower"}


_FUSED_OPS = {
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "BiasSoftmax",
}


def _timing_session(model: onnx.ModelProto) -> ort.InferenceSession:
    return cpu_session(model, options=timing_options(0))


def _seq(feeds: dict[str, np.ndarray]) -> int:
    return max(array.shape[1] for array in feeds.values() if array.ndim >= 2)
