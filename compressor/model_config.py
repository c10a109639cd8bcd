"""config.json of a compressed model: the source's transformers config rewritten to the pruned decoder's architecture.

A folder output (`compress DECODER --out DIR`) must load in optimum's `ORTModelForCausalLM.from_pretrained(DIR)`,
which builds the first step's empty KV cache from config.json alone (optimum 2.1, `modeling_decoder.py`):
`num_key_value_heads` (GPT-2 and other MHA families: `num_attention_heads`) heads of size
`hidden_size // num_attention_heads`, for every layer. So:

- per-layer KV head counts must be equal (one number in the config); otherwise `DecoderConfigError`, before any file
  is written;
- `num_attention_heads`, `num_key_value_heads` and `head_dim` are those of the pruned graph (read from its cache
  inputs, whose head counts and head sizes are concrete), `intermediate_size` the pruned FFN width;
- `hidden_size` is written as `num_attention_heads * head_dim`, because optimum derives the head size from it; when
  that differs from the true width of the hidden stream (heads or the hidden stream pruned), the true widths are
  kept under `"compressed"` (`hidden_size`, `intermediate_size` per layer) with the original values.

GPT-2 names the same fields `n_head`, `n_inner`, `n_embd`; it has no separate KV head count.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from compressor.decoder import detect
from compressor.errors import CompressorError

CONFIG_FILE = "config.json"
GPT2_NAMES = {"num_attention_heads": "n_head", "intermediate_size": "n_inner", "hidden_size": "n_embd"}


class DecoderConfigError(CompressorError):
    """A pruned decoder that config.json (and so optimum's loader) cannot describe."""


def compressed_config(source: dict[str, Any], model: onnx.ModelProto, report: dict) -> dict[str, Any] | None:
    """`source` (the input folder's parsed config.json) updated to the compressed `model`, or None when `model` is
    not a decoder (encoders keep their config as it is). `report` is the compress report (its `groups`)."""
    signature = detect(model)
    if signature is None:
        return None
    kv_by_layer = [c.heads for c in signature.caches if c.kind == "key"]
    if len(set(kv_by_layer)) > 1:
        raise DecoderConfigError(
            f"the compressed decoder has different KV head counts per layer ({', '.join(map(str, kv_by_layer))}); "
            "config.json and ORTModelForCausalLM take one count for every layer, so this --out folder cannot "
            "describe it: write an .onnx file instead, or choose a --keep that keeps whole heads evenly"
        )
    head_dims = {c.head_dim for c in signature.caches}
    if len(head_dims) > 1:
        raise DecoderConfigError(f"the compressed decoder's cache head sizes differ ({sorted(head_dims)})")
    gpt2 = source.get("model_type") == "gpt2"

    def get(name: str, default=None):
        return source.get(GPT2_NAMES.get(name, name) if gpt2 else name, default)

    heads_before = get("num_attention_heads")
    kv_before = heads_before if gpt2 else get("num_key_value_heads", heads_before)
    if not isinstance(heads_before, int) or not isinstance(kv_before, int) or not kv_before or heads_before % kv_before:
        raise DecoderConfigError(
            f"the input's {CONFIG_FILE} gives no usable attention head counts "
            f"(num_attention_heads {heads_before!r}, num_key_value_heads {kv_before!r}); it cannot be updated"
        )
    kv_heads, head_dim = kv_by_layer[0], head_dims.pop()
    heads = kv_heads * (heads_before // kv_before)
    widths = {g["kind"]: [] for g in report.get("groups", [])}
    for group in report.get("groups", []):
        widths[group["kind"]].append(group["units_after"])
    hidden = widths.get("hidden", [get("hidden_size")])[0]
    ffn = widths.get("ffn") or None
    config = dict(source)
    fields: dict[str, Any] = {"num_attention_heads": heads, "hidden_size": heads * head_dim}
    if ffn:
        fields["intermediate_size"] = max(ffn)
    if gpt2:
        config.update({GPT2_NAMES[k]: v for k, v in fields.items()})
    else:
        config.update(fields, num_key_value_heads=kv_heads, head_dim=head_dim)
    if hidden != heads * head_dim or (ffn and len(set(ffn)) > 1):
        config["compressed"] = {
            "note": "hidden_size is num_attention_heads * head_dim, as optimum's ORTModelForCausalLM derives the KV "
            "head size from it; the true widths of the pruned model are these",
            "hidden_size": hidden,
            "intermediate_size_per_layer": ffn,
            "original": {
                k: get(k) for k in ("num_attention_heads", "num_key_value_heads", "hidden_size", "intermediate_size")
            },
        }
    return config


def rewrite(config_bytes: bytes, model: onnx.ModelProto, report: dict) -> bytes | None:
    """The bytes of the updated config.json, or None to copy it unchanged (an encoder)."""
    if detect(model) is None:
        return None
    try:
        source = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecoderConfigError(
            f"the input's {CONFIG_FILE} is not valid JSON ({str(error).splitlines()[0]})"
        ) from None
    if not isinstance(source, dict):
        raise DecoderConfigError(f"the input's {CONFIG_FILE} does not hold a JSON object")
    updated = compressed_config(source, model, report)
    return None if updated is None else (json.dumps(updated, indent=2) + "\n").encode()
