"""A decoder's KV cache: `past_key_values.N.key` / `.value` inputs and `present.N.key` / `.value` outputs are state the
model hands itself between decoding steps, not a user-facing interface. A group of KV heads may shrink their heads
axis; the sliced model then declares the new concrete size on them."""

from __future__ import annotations

import re

import numpy as np
import onnx

CACHE_INPUT = re.compile(r"past_key_values[._](\d+)[._](key|value)")
CACHE_OUTPUT = re.compile(r"present[._](\d+)[._](key|value)")


def is_cache(name: str) -> bool:
    return bool(CACHE_INPUT.fullmatch(name) or CACHE_OUTPUT.fullmatch(name))


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _width(model: onnx.ModelProto, name: str) -> int | None:
    """The last-axis width of `name`, read back through the projection that writes it: a MatMul's constant weight,
    MatMulNBits' N, through a bias Add or a RotaryEmbedding (GroupQueryAttention with do_rotary=0)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    node = producers.get(name)
    while node is not None:
        if node.op_type == "MatMulNBits":
            return _attr(node, "N", 0) or None
        if node.op_type in ("MatMul", "Gemm") and len(weights.get(node.input[1], ())) == 2:
            return weights[node.input[1]][-1]
        if node.op_type not in ("Add", "RotaryEmbedding"):
            return None
        node = producers.get(node.input[0])
    return None


def gqa_head_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Head size of each cache input read by a GroupQueryAttention node (the GenAI builder leaves it symbolic,
    `kv_cache_dim`; ONNX Runtime refuses any other size): packed query width / (num_heads + 2 kv_num_heads), or a
    separate query's width / num_heads."""
    sizes = {}
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        inputs = list(node.input) + [""] * 5
        width = _width(model, inputs[0])
        heads, kv_heads = _attr(node, "num_heads", 0), _attr(node, "kv_num_heads", 0)
        if not width or not heads:
            continue
        head_size = width // (heads if inputs[1] else heads + 2 * kv_heads)
        for name in inputs[3:5]:
            if name:
                sizes[name] = head_size
    return sizes


def decoder_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dummy feeds fixed for a decoder. The attention mask spans the past and the new tokens: optimum declares its
    length as `past_sequence_length + sequence_length`, the dynamo exporter as a symbol of its own, while the graph
    gathers mask entries at positions up to past + new. Cache inputs read by GroupQueryAttention get the head size on
    their last axis and an empty past (ONNX Runtime's kernel takes a prompt of several tokens over a past only for
    batch size 1)."""
    sizes = gqa_head_sizes(model)
    feeds = dict(feeds)
    for name, head_size in sizes.items():
        if name in feeds and feeds[name].ndim == 4:
            batch, kv_heads = feeds[name].shape[:2]
            feeds[name] = np.zeros((batch, kv_heads, 0, head_size), dtype=feeds[name].dtype)
    past = [value.shape[2] for name, value in feeds.items() if CACHE_INPUT.fullmatch(name) and value.ndim == 4]
    if past and "input_ids" in feeds and "attention_mask" in feeds:
        batch, new = feeds["input_ids"].shape
        feeds["attention_mask"] = np.ones((batch, past[0] + new), dtype=feeds["attention_mask"].dtype)
    return feeds
