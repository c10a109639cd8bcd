"""ONNX Runtime GenAI model folders: find the model file from genai_config.json, and write the config of a pruned model.

A GenAI folder (what `onnxruntime_genai.models.builder` writes and `onnxruntime_genai.Model(folder)` loads) holds
`genai_config.json`, the decoder's ONNX file named by its `model.decoder.filename`, that file's external data, and the
tokenizer. Schema of onnxruntime-genai 0.18: the architecture lives in `model.decoder` as `num_attention_heads`,
`num_key_value_heads`, `head_size`, `hidden_size` and `num_hidden_layers`; there is no FFN width field.

What 0.18 actually reads (checked on the builder's CPU fp32 Llama): the KV cache buffers get their head count from the
model's `past_key_values.*` input shapes (a concrete dimension 1) and their head size from `head_size` (the model
declares dimension 3 symbolic, `kv_cache_dim`), so a wrong `head_size` fails inside GroupQueryAttention while wrong
`num_key_value_heads`, `num_attention_heads` or `hidden_size` go unnoticed on CPU. A pruned model therefore needs both:
concrete head counts in its cache inputs and outputs (the graph side) and these fields (this module).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import onnx

from compressor.decoder import detect
from compressor.errors import CompressorError

CONFIG_FILE = "genai_config.json"
ATTENTION_OPS = ("GroupQueryAttention", "MultiHeadAttention", "Attention")


class GenAIFolderError(CompressorError):
    """A folder that is not a usable ONNX Runtime GenAI model folder (no or unreadable genai_config.json)."""


def read_config(folder: Path | str) -> dict[str, Any]:
    """The parsed genai_config.json of `folder`."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise GenAIFolderError(f"{folder} is not an ONNX Runtime GenAI model folder: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GenAIFolderError(f"{path} is not valid JSON: {reason}") from None
    if not isinstance(config, dict):
        raise GenAIFolderError(f"{path} does not hold a JSON object")
    return config


def _decoder(config: dict[str, Any], where: str) -> dict[str, Any]:
    model = config.get("model")
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(decoder, dict):
        raise GenAIFolderError(f"{where} has no model.decoder section")
    return decoder


def is_genai_folder(folder: Path | str) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def names_model(folder: Path, model: Path) -> bool:
    """Whether `folder` is a GenAI folder whose genai_config.json names `model` as its decoder (a broken config is
    refused by `model_path`, in one line)."""
    return is_genai_folder(folder) and model_path(folder).resolve() == model.resolve()


def model_path(folder: Path | str) -> Path:
    """The decoder's ONNX file, as genai_config.json names it in model.decoder.filename."""
    where = str(Path(folder) / CONFIG_FILE)
    filename = _decoder(read_config(folder), where).get("filename")
    if not isinstance(filename, str) or not filename:
        raise GenAIFolderError(f"{where} names no model file (model.decoder.filename)")
    path = Path(folder) / filename
    if not path.is_file():
        raise GenAIFolderError(f"{where} names model file {filename!r}, which is not in {folder}")
    return path


def updated_config(
    config: dict[str, Any],
    heads: int,
    kv_heads: int,
    head_size: int,
    hidden: int | None,
    intermediate: int | None,
) -> dict[str, Any]:
    """A copy of `config` describing the pruned decoder: `heads` query heads over `kv_heads` KV heads of `head_size`.

    `hidden` is the new hidden width (None: unchanged). `intermediate` is checked but written nowhere: the 0.18 schema
    has no FFN width (the ONNX file alone carries it). Per-layer head counts are not expressible here: ORT GenAI takes
    each layer's KV head count from its cache input's shape. Nothing else changes (context length,
    search options, token ids, input and output names).
    """
    for name, value in (
        ("heads", heads),
        ("kv_heads", kv_heads),
        ("head_size", head_size),
        ("hidden", hidden),
        ("intermediate", intermediate),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, not {value!r}")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot be shared evenly by {kv_heads} KV heads")
    result = copy.deepcopy(config)
    decoder = _decoder(result, CONFIG_FILE)
    decoder["num_attention_heads"] = heads
    decoder["num_key_value_heads"] = kv_heads
    decoder["head_size"] = head_size
    if hidden is not None:
        decoder["hidden_size"] = hidden
    return result


def rewrite(config_bytes: bytes, model: onnx.ModelProto, report: dict) -> bytes:
    """The bytes of genai_config.json for the compressed `model`: head counts from its attention nodes (the largest
    of any layer; the cache inputs give each layer's own KV head count, which is what ORT GenAI reads), the head size
    of its cache, and the hidden and FFN widths from the compress `report`'s groups."""
    config = json.loads(config_bytes.decode("utf-8"))
    signature = detect(model)
    if signature is None:
        raise GenAIFolderError(f"the compressed model has no KV cache inputs; {CONFIG_FILE} cannot describe it")
    kv_heads = max(c.heads for c in signature.caches)
    head_sizes = {c.head_dim for c in signature.caches}
    if len(head_sizes) > 1:
        raise GenAIFolderError(f"the compressed decoder's cache head sizes differ ({sorted(head_sizes)})")
    decoder = _decoder(config, CONFIG_FILE)
    ratio = decoder.get("num_attention_heads", kv_heads) // max(1, decoder.get("num_key_value_heads", kv_heads))
    heads = max(
        (a.i for n in model.graph.node if n.op_type in ATTENTION_OPS for a in n.attribute if a.name == "num_heads"),
        default=kv_heads * max(1, ratio),
    )
    widths: dict[str, list[int]] = {}
    for group in report.get("groups", []):
        widths.setdefault(group["kind"], []).append(group["units_after"])
    hidden = widths.get("hidden", [None])[0]
    intermediate = max(widths["ffn"]) if widths.get("ffn") else None
    updated = updated_config(config, heads, kv_heads, head_sizes.pop(), hidden, intermediate)
    return (json.dumps(updated, indent=4) + "\n").encode()
