"""What makes a model a decoder language model, read from its graph signature alone (never from a per-model table).

A decoder has cache inputs `past_key_values.N.key` / `.value` of shape (batch, kv_heads, past, head_dim), with
concrete head counts and head sizes, each returned extended as `present.N.key` / `.value`; token ids `input_ids`;
and optionally `attention_mask` (over past and new tokens) and `position_ids`. Callers give it token ids (and a
mask); the tool supplies the rest: empty caches (past length 0) and position ids counted over unmasked tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from compressor.errors import CompressorError
from graph_passes.cache_state import CACHE_INPUT, gqa_head_sizes

CACHE_OUTPUT = "present.{layer}.{kind}"
TOKENS, MASK, POSITIONS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"


class DecoderLayoutError(CompressorError):
    """A model with cache inputs laid out in a way the tool does not recognise."""


@dataclass(frozen=True)
class CacheInput:
    name: str
    layer: int
    kind: str  # "key" or "value"
    heads: int
    head_dim: int
    dtype: np.dtype
    output: str  # the present.* output that returns it extended by the new tokens


@dataclass(frozen=True)
class DecoderSignature:
    caches: tuple[CacheInput, ...]
    has_mask: bool
    has_positions: bool
    vocab: int | None  # the logits' last axis, when the graph declares it

    @property
    def layers(self) -> int:
        return len(self.caches) // 2

    @property
    def supplied(self) -> set[str]:
        """Inputs the tool feeds itself: caches and position ids."""
        return {c.name for c in self.caches} | ({POSITIONS} if self.has_positions else set())

    def feeds(self, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Complete feeds from `input_ids` (batch, seq) and an optional `attention_mask`: ones when absent, position
        ids counted over unmasked tokens (masked ones get 1, as transformers does), empty caches."""
        ids = np.asarray(tokens[TOKENS], dtype=np.int64)
        mask = np.asarray(tokens.get(MASK, np.ones_like(ids)), dtype=np.int64)
        feeds = {TOKENS: ids}
        if self.has_mask:
            feeds[MASK] = mask
        if self.has_positions:
            feeds[POSITIONS] = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1).astype(np.int64)
        for cache in self.caches:
            feeds[cache.name] = np.zeros((len(ids), cache.heads, 0, cache.head_dim), dtype=cache.dtype)
        return feeds


def detect(model: onnx.ModelProto) -> DecoderSignature | None:
    """The decoder signature of `model`, or None when it has no `past_key_values` inputs (an encoder).

    Raises DecoderLayoutError for cache inputs in a layout other than the one above."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    cache_names = [name for name in inputs if name.startswith("past")]
    if not cache_names:
        return None
    outputs = {v.name: v for v in model.graph.output}
    head_sizes = gqa_head_sizes(model)
    caches = tuple(
        sorted((_cache_input(inputs[n], outputs, head_sizes) for n in cache_names), key=lambda c: (c.layer, c.kind))
    )
    layers = sorted({c.layer for c in caches})
    if layers != list(range(len(layers))) or len(caches) != 2 * len(layers):
        raise DecoderLayoutError(
            f"the model's cache inputs are not one key and one value for each layer 0..{len(layers) - 1}; "
            "export it with optimum's text-generation-with-past task"
        )
    if TOKENS not in inputs:
        raise DecoderLayoutError(
            f"the model has cache inputs but no {TOKENS!r} input; only token-id decoders are supported"
        )
    logits = outputs.get(LOGITS)
    if logits is None:
        raise DecoderLayoutError(f"the model has cache inputs but no {LOGITS!r} output")
    last = logits.type.tensor_type.shape.dim[-1]
    return DecoderSignature(caches, MASK in inputs, POSITIONS in inputs, last.dim_value or None)


def _cache_input(
    value: onnx.ValueInfoProto, outputs: dict[str, onnx.ValueInfoProto], head_sizes: dict[str, int]
) -> CacheInput:
    """One cache input; its head size is declared, or (the GenAI builder's symbolic `kv_cache_dim`) read from the
    GroupQueryAttention node that reads it (`head_sizes`)."""
    match = CACHE_INPUT.fullmatch(value.name)
    dims = value.type.tensor_type.shape.dim
    concrete = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    if len(concrete) == 4 and not concrete[3]:
        concrete[3] = head_sizes.get(value.name, 0)
    if match is None or len(dims) != 4 or not concrete[1] or not concrete[3] or concrete[2]:
        shape = "x".join(str(c or d.dim_param or "?") for c, d in zip(concrete, dims))
        raise DecoderLayoutError(
            f"cache input {value.name!r} ({shape}) is not past_key_values.N.key/value of shape "
            "batch x heads x past x head_size with a dynamic past; export with optimum's text-generation-with-past"
        )
    layer, kind = int(match.group(1)), match.group(2)
    output = CACHE_OUTPUT.format(layer=layer, kind=kind)
    if output not in outputs:
        raise DecoderLayoutError(f"cache input {value.name!r} has no {output!r} output to return it")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return CacheInput(value.name, layer, kind, concrete[1], concrete[3], dtype, output)


def declared_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input's declared shape: sizes, or the names of dynamic axes."""
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in model.graph.input
    }


def fit_empty_caches(declared: dict[str, list[int | str]], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` with every empty cache (past length 0) shaped as this model declares it: the feeds of a decoder then
    also serve its pruned copy, which has fewer KV heads."""
    fitted = dict(feeds)
    for name, value in feeds.items():
        shape = declared.get(name, [])
        if CACHE_INPUT.fullmatch(name) and value.ndim == 4 == len(shape) and value.shape[2] == 0:
            heads, head_dim = (s if isinstance(s, int) and s > 0 else v for s, v in zip(shape[1::2], value.shape[1::2]))
            fitted[name] = np.zeros((value.shape[0], heads, 0, head_dim), dtype=value.dtype)
    return fitted
