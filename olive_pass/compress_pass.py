"""`MiCompress`: an Olive pass that runs `compressor.compress` on an ONNX model.

It returns the smaller dense model with `model_attributes` that say its new shape, so that Olive's
`OrtTransformersOptimization` after it fuses attention with the pruned head count: `num_attention_heads` and
`intermediate_size` are the per-layer counts when every layer has the same, else 0 (for the fusion, num_heads=0 reads
each layer's count from its own Reshape targets, as `compress --optimize` does); `hidden_size` is the new width when
`hidden` was pruned. The exact per-layer counts are under `mi_compressor`, and the report is written beside the model
as `compress_report.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from olive.common.config_utils import validate_config
from olive.data.config import DataConfig
from olive.hardware import AcceleratorSpec
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.passes import Pass
from olive.passes.pass_config import BasePassConfig, PassConfigParam

from compressor import compress
from compressor.errors import CompressorError
from compressor.output import write_atomic
from graph_passes.model_io import external_data_files
from graph_passes.sessions import fits_one_protobuf

logger = logging.getLogger(__name__)

REPORT_NAME = "compress_report.json"
# The names transformers configs give each size; Olive reads its aliases before the canonical name (first here)
NAMES = {
    "num_attention_heads": ("num_attention_heads", "num_heads", "n_head", "n_heads", "encoder_attention_heads"),
    "intermediate_size": ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner", "encoder_ffn_dim"),
    "hidden_size": ("hidden_size", "dim", "d_model", "n_embd"),
}


class MiCompress(Pass):
    """Prune attention heads, FFN neurons (and optionally the hidden stream) chosen by mutual information."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        return {
            "keep": PassConfigParam(
                type_=float,
                default_value=0.4,
                description="Share of the encoder's prunable weights to keep, in (0, 1].",
            ),
            "method": PassConfigParam(
                type_=str, default_value="mi", description="How units are scored: mi, wanda, magnitude or random."
            ),
            "granularity": PassConfigParam(
                type_=list[str], default_value=["heads", "ffn"], description="What to prune: heads, ffn, hidden."
            ),
            "calibration": PassConfigParam(
                type_=str | None,
                default_value=None,
                description=(
                    "Calibration file (.tsv, .csv, .jsonl with text, or .npz with one array per input), tokenized "
                    "with `tokenizer` (default: the model's folder). Give this or `data_config`."
                ),
            ),
            "data_config": PassConfigParam(
                type_=DataConfig | dict | None,
                default_value=None,
                description=(
                    "Olive data config whose batches are model inputs (a dict of arrays, or (inputs, label)); all "
                    "batches must have the same sequence length. Give this or `calibration`."
                ),
            ),
            "tokenizer": PassConfigParam(
                type_=str | None, default_value=None, description="Tokenizer folder for a text calibration file."
            ),
            "text_columns": PassConfigParam(type_=list[str] | None, default_value=None, description="Text columns."),
            "label_column": PassConfigParam(type_=str | None, default_value=None, description="Label column."),
            "samples": PassConfigParam(type_=int, default_value=512, description="Calibration samples to use."),
            "max_length": PassConfigParam(type_=int, default_value=128, description="Tokenizer max length."),
            "batch_size": PassConfigParam(type_=int, default_value=32, description="Batch size for capture and refit."),
            "seed": PassConfigParam(
                type_=int, default_value=0, description="Seed for sampling and the held-out split."
            ),
            "recover": PassConfigParam(
                type_=bool,
                default_value=True,
                description="Refit the projections that read pruned units by least squares.",
            ),
            "allocation": PassConfigParam(
                type_=str,
                default_value="uniform",
                description=(
                    "uniform: every layer keeps the same number of heads, so the fusion pass after this one gets one "
                    "(num_heads, hidden_size) pair, as ORT's BertOnnxModel requires; global: mi moves heads and "
                    "neurons between layers (the compress CLI's default), for workflows that do not fuse afterwards."
                ),
            ),
            "quantize": PassConfigParam(
                type_=str | None,
                default_value=None,
                description=(
                    "int8: quantize inside compress (dynamic, per channel). In a workflow that fuses afterwards, "
                    "leave this None and put OnnxDynamicQuantization after OrtTransformersOptimization."
                ),
            ),
        }

    def _run_for_config(
        self, model: ONNXModelHandler, config: type[BasePassConfig], output_model_path: str
    ) -> ONNXModelHandler:
        source = Path(model.model_path)
        if config.calibration is not None and config.data_config is not None:
            raise CompressorError("MiCompress takes `calibration` or `data_config`, not both")
        calibration = config.calibration
        if config.data_config is not None:
            calibration = data_config_arrays(config.data_config, source)
        result = compress(
            source,
            calibration,
            keep=config.keep,
            method=config.method,
            granularity=tuple(config.granularity),
            samples=config.samples,
            max_length=config.max_length,
            tokenizer=config.tokenizer,
            text_columns=config.text_columns,
            label_column=config.label_column,
            batch_size=config.batch_size,
            seed=config.seed,
            recover=config.recover,
            allocation=config.allocation,
            quantize=config.quantize,
        )
        output = Path(resolve_onnx_path(output_model_path, "model.onnx"))
        external = write_compressed(result.model, output, source)
        write_atomic(output.parent / REPORT_NAME, (json.dumps(result.report, indent=2) + "\n").encode())
        attributes = pruned_attributes(base_attributes(model, source), result.report)
        return ONNXModelHandler(
            model_path=str(output.parent) if external else str(output),
            onnx_file_name=output.name if external else None,
            inference_settings=model.inference_settings,
            model_attributes=attributes,
        )


def data_config_arrays(data_config: DataConfig | dict, source: Path) -> dict[str, np.ndarray]:
    """All batches of an Olive data config, as one array per model input (the form `compress` takes); a sample
    without its batch axis (Olive's unbatched dataloaders) gets one."""
    graph = onnx.load(str(source), load_external_data=False).graph
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}
    loader = validate_config(data_config, DataConfig).to_data_container().create_dataloader()
    batches: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(inputs, dict):
            raise CompressorError(f"MiCompress: data_config batches must be dicts of inputs, not {type(inputs)}")
        for name, value in inputs.items():
            array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            batches.setdefault(name, []).append(array[None] if array.ndim == ranks.get(name, 0) - 1 else array)
    if not batches:
        raise CompressorError("MiCompress: the data_config gave no batches")
    try:
        return {name: np.concatenate(parts) for name, parts in batches.items()}
    except ValueError as exc:
        raise CompressorError(
            "MiCompress: data_config batches differ in shape; pad every sample to one max_length"
        ) from exc


def write_compressed(model: onnx.ModelProto, output: Path, source: Path) -> bool:
    """Write `model` at `output`, its weights in one external data file when the source's are (or when it is too
    large for one protobuf), as compress's own output does; True when external data was written."""
    external = bool(external_data_files(onnx.load(str(source), load_external_data=False)))
    output.parent.mkdir(parents=True, exist_ok=True)
    if external or not fits_one_protobuf(model):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # onnx.save moves the weights out of the proto it is given
        onnx.save(copy, str(output), save_as_external_data=True, location=output.name + ".data")
        return True
    write_atomic(output, model.SerializeToString())
    return False


def base_attributes(model: ONNXModelHandler, source: Path) -> dict[str, Any]:
    """The input model's attributes, else the config.json beside it (an optimum or transformers export)."""
    if model.model_attributes:
        return dict(model.model_attributes)
    config = source.parent / "config.json"
    if config.is_file():
        return json.loads(config.read_text())
    return {}


def pruned_attributes(base: dict[str, Any], report: dict) -> dict[str, Any] | None:
    """`base` with the head count, FFN width and hidden size of the compressed model (None when `base` is empty: the
    fusion then needs model_type in its own config and reads the head counts from the graph)."""
    if not base:
        logger.warning("MiCompress: no model_attributes nor config.json; OrtTransformersOptimization needs model_type")
        return None
    heads = [g["units_after"] for g in report["groups"] if g["kind"] == "heads"]
    ffn = [g["units_after"] for g in report["groups"] if g["kind"] == "ffn"]
    hidden = [g["units_after"] for g in report["groups"] if g["kind"] == "hidden"]
    attributes = dict(base)
    width, count = _value(base, "hidden_size"), _value(base, "num_attention_heads")
    if width and count and not base.get("head_dim"):
        attributes["head_dim"] = width // count  # pruning heads keeps each head's width
    for name, counts in (("num_attention_heads", heads), ("intermediate_size", ffn), ("hidden_size", hidden)):
        if counts:
            for key in {NAMES[name][0], *(k for k in NAMES[name] if k in base)}:
                attributes[key] = uniform(counts)
    attributes["mi_compressor"] = {"num_attention_heads": heads, "intermediate_size": ffn, "hidden_size": hidden}
    return attributes


def _value(attributes: dict[str, Any], name: str) -> Any:
    return next((attributes[k] for k in NAMES[name] if attributes.get(k)), None)


def uniform(counts: list[int]) -> int:
    """The count every layer shares, or 0 when they differ (0 tells the fusion to read each layer's count)."""
    return counts[0] if len(set(counts)) == 1 else 0
