"""int8 after pruning: ONNX Runtime's dynamic quantization (weights int8 per output channel, activations quantized
at run time), which needs no calibration and runs on every CPU.

A model that is already quantized is refused: pruning must come first, since the channel analysis and the refits
work on float weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from compressor.errors import CompressorError
from compressor.progress import quiet_loggers

QUANTIZE_TYPES = ("int8",)
QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "QGemm",
    "MatMulNBits",
}


class QuantizedInputError(CompressorError):
    """The input model is already quantized."""


def quantized_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if n.op_type in QUANTIZED_OPS), None)


def refuse_quantized(model: onnx.ModelProto) -> None:
    node = quantized_node(model)
    if node is not None:
        raise QuantizedInputError(
            f"the model is already quantized ({node.op_type} node {node.name!r}); compress the float model, then "
            "quantize (compress --quantize int8)"
        )


def quantize_int8(model: onnx.ModelProto, per_channel: bool = True) -> onnx.ModelProto:
    """Dynamic int8 quantization of every MatMul and Gemm weight (per output channel unless `per_channel` is False)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    refuse_quantized(model)
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(model, str(source))
        with quiet_loggers(None):
            quantize_dynamic(str(source), str(target), per_channel=per_channel, weight_type=QuantType.QInt8)
        return onnx.load(str(target))
