"""One small rule per operator type: how a node couples the axes of its inputs and outputs.

A rule ties axes that must shrink together, records factorizations (a Reshape that splits an axis into
(heads, head_dim)), tags axes whose role tells the group's kind (normalised, embedding), records linear
weights (which axis is read, which is written), and blocks axes it cannot slice through. An operator without
a rule blocks every axis it touches: safe by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from graph_passes.dims import Blocker, DimGraph, Piece
from graph_passes.shape_arithmetic import Entry, Product, Quotient, Size, entries


@dataclass(frozen=True)
class LinearWeight:
    """A constant matrix applied to `activation`: rows read `in_axis`, columns write `out_axis`."""

    weight: str
    in_axis: int
    out_axis: int
    node_index: int
    activation: str
    bits: int = 0  # 0: a float matrix; else MatMulNBits' packed weight (N, K blocks, bytes): `in_axis` is its blocks


@dataclass
class RuleContext:
    """What a rule may read (concrete values, which tensors are constant) and the records it writes."""

    dims: DimGraph
    values: dict[str, np.ndarray]
    static: set[str]
    tags: list[tuple[str, int, str]] = field(default_factory=list)
    linears: list[LinearWeight] = field(default_factory=list)
    sizes: dict[str, list[Entry]] = field(default_factory=dict)  # what shape arithmetic spells (shape_arithmetic)
    node_index: int = 0

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.values[name].shape)

    def dim(self, name: str, axis: int) -> int:
        shape = self.shape(name)
        axis = axis % len(shape)
        return self.dims.axis(name, axis, shape[axis])

    def tie(self, a: str, a_axis: int, b: str, b_axis: int) -> None:
        self.dims.union(self.dim(a, a_axis), self.dim(b, b_axis))

    def block(self, name: str, axis: int, node: onnx.NodeProto, reason: str) -> None:
        self.dims.block(self.dim(name, axis), Blocker(node.name, node.op_type, reason))

    def tag(self, name: str, axis: int, tag: str) -> None:
        self.dim(name, axis)  # an axis only tagged (a mask summed over its length) is still an axis
        self.tags.append((name, axis % len(self.shape(name)), tag))

    def value(self, name: str) -> np.ndarray:
        return self.values[name]


Rule = Callable[[onnx.NodeProto, RuleContext], None]


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _inputs(node: onnx.NodeProto) -> list[str]:
    return [name for name in node.input if name]


def tie_broadcast(ctx: RuleContext, source: str, target: str) -> None:
    """Tie the axes of `source` that numpy-broadcast onto `target` without stretching (right-aligned)."""
    src, dst = ctx.shape(source), ctx.shape(target)
    offset = len(dst) - len(src)
    for axis, size in enumerate(src):
        if axis + offset >= 0 and size == dst[axis + offset]:
            ctx.tie(source, axis, target, axis + offset)


def elementwise(node: onnx.NodeProto, ctx: RuleContext) -> None:
    out = node.output[0]
    sources = _inputs(node)
    for name in sources:
        tie_broadcast(ctx, name, out)
    activations = [name for name in sources if name not in ctx.static and ctx.shape(name) == ctx.shape(out)]
    if node.op_type == "Add" and len(activations) == 2 and ctx.shape(out):
        ctx.tag(out, -1, "residual")


def same_shape(node: onnx.NodeProto, ctx: RuleContext) -> None:
    for out in (o for o in node.output if o and o in ctx.values):
        if ctx.shape(out) == ctx.shape(node.input[0]):
            for axis in range(len(ctx.shape(out))):
                ctx.tie(node.input[0], axis, out, axis)


def along_axis(reason: str) -> Rule:
    """Element-preserving ops that mix values along one axis (Softmax, CumSum): that axis cannot be sliced."""

    def rule(node: onnx.NodeProto, ctx: RuleContext) -> None:
        same_shape(node, ctx)
        default = -1 if node.op_type in ("Softmax", "LogSoftmax") else 0
        axis = _attr(node, "axis", default)
        if node.op_type == "CumSum":
            axis = int(ctx.value(node.input[1]))
        ctx.block(node.input[0], axis, node, reason)

    return rule


def matmul(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, b = node.input[0], node.input[1]
    y = node.output[0]
    ra, rb = len(ctx.shape(a)), len(ctx.shape(b))
    if ra < 2 or rb < 2:
        no_rule(node, ctx, "matrix-vector products are not supported")
        return
    for name, rank in ((a, ra), (b, rb)):
        batch = ctx.shape(name)[:-2]
        for axis, size in enumerate(batch):
            target = axis + (len(ctx.shape(y)) - 2 - len(batch))
            if size == ctx.shape(y)[target]:
                ctx.tie(name, axis, y, target)
    ctx.tie(a, -2, y, -2)
    ctx.tie(b, -1, y, -1)
    ctx.tie(a, -1, b, -2)
    if b in ctx.static and rb == 2:
        ctx.linears.append(LinearWeight(b, 0, 1, ctx.node_index, a))


def gemm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, b = node.input[0], node.input[1]
    y = node.output[0]
    a_rows, a_cols = (1, 0) if _attr(node, "transA", 0) else (0, 1)
    b_rows, b_cols = (1, 0) if _attr(node, "transB", 0) else (0, 1)
    ctx.tie(a, a_rows, y, 0)
    ctx.tie(a, a_cols, b, b_rows)
    ctx.tie(b, b_cols, y, 1)
    if len(node.input) > 2 and node.input[2]:
        tie_broadcast(ctx, node.input[2], y)
    if b in ctx.static and not _attr(node, "transA", 0):
        ctx.linears.append(LinearWeight(b, b_rows, b_cols, ctx.node_index, a))


def matmul_nbits(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """MatMulNBits (contrib): A (..., K) times a weight quantized to `bits` in blocks of `block_size` along K, stored
    as B (N, K blocks, bytes) with scales (N, K blocks), optional zero points (N, packed blocks) and bias (N); Y
    (..., N). Output channels N slice freely (rows of B, scales, zero points, bias); input channels K only in whole
    blocks, which `DimGraph.quantized` records for the group and the slicer checks per mask."""
    inputs = list(node.input) + [""] * 6
    a, weight, scales, zero_points, g_idx, bias = inputs[:6]
    y = node.output[0]
    rank = len(ctx.shape(a))
    for axis in range(rank - 1):
        ctx.tie(a, axis, y, axis)
    if g_idx or weight not in ctx.static or len(ctx.shape(weight)) != 3 or len(ctx.shape(scales)) != 2:
        no_rule(node, ctx, "MatMulNBits with a group index, a computed weight or one-dimensional scales")
        return
    for name in (weight, scales, zero_points, bias):
        if name:
            ctx.tie(name, 0, y, -1)
    ctx.dims.quantized.append((ctx.dim(a, -1), _attr(node, "block_size", 0), node.name))
    ctx.linears.append(LinearWeight(weight, 1, 0, ctx.node_index, a, _attr(node, "bits", 4)))


def gather(node: onnx.NodeProto, ctx: RuleContext) -> None:
    data, indices, out = node.input[0], node.input[1], node.output[0]
    rank = len(ctx.shape(data))
    axis = _attr(node, "axis", 0) % rank
    extra = len(ctx.shape(indices))
    for k in range(axis):
        ctx.tie(data, k, out, k)
    for k in range(extra):
        ctx.tie(indices, k, out, axis + k)
    for k in range(axis + 1, rank):
        ctx.tie(data, k, out, k - 1 + extra)
        if data in ctx.static:
            ctx.tag(out, k - 1 + extra, "embedding")
    ctx.block(data, axis, node, "selects entries along this axis")


def gather_nd(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """GatherND: each index tuple of length k (the indices' last axis) picks an entry of the data's axes after the
    first `batch_dims` (blocked); the output is the indices' leading axes (the first `batch_dims` shared with the
    data), then the data's axes after the picked ones."""
    data, indices, out = node.input[0], node.input[1], node.output[0]
    batch, depth = _attr(node, "batch_dims", 0), ctx.shape(indices)[-1]
    lead = len(ctx.shape(indices)) - 1
    for k in range(batch):
        ctx.tie(data, k, out, k)
    for k in range(lead):
        ctx.tie(indices, k, out, k)
    for k in range(batch, batch + depth):
        ctx.block(data, k, node, "selects entries along this axis")
    for k in range(batch + depth, len(ctx.shape(data))):
        ctx.tie(data, k, out, lead + k - batch - depth)


def gather_block_quantized(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """GatherBlockQuantized (contrib): rows of a table quantized in blocks (a tied int4 embedding reading lm_head's
    packed weight and scales). The gathered axis selects entries; the channel axis of its output is packed and
    quantized in blocks whose slicing is not written yet, so it blocks its group (the hidden stream)."""
    data, indices, out = node.input[0], node.input[1], node.output[0]
    extra = len(ctx.shape(indices))
    for k in range(extra):
        ctx.tie(indices, k, out, k)
    for name in _inputs(node)[2:]:
        if len(ctx.shape(name)) == len(ctx.shape(data)) and ctx.shape(name)[0] == ctx.shape(data)[0]:
            ctx.tie(name, 0, data, 0)
    ctx.block(data, 0, node, "selects entries along this axis")
    ctx.tag(out, -1, "embedding")
    ctx.block(
        out,
        -1,
        node,
        "a block-quantized embedding table (tied to lm_head's int4 weight): its channels are "
        "not sliced yet; keep the hidden stream whole",
    )


def pad(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Pad: axes that keep their length are tied; an axis that changes length cannot be pruned."""
    data, out = node.input[0], node.output[0]
    for axis, (before, after) in enumerate(zip(ctx.shape(data), ctx.shape(out))):
        if before == after:
            ctx.tie(data, axis, out, axis)
        else:
            ctx.block(data, axis, node, "pads this axis to a fixed range")


def slice_(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Slice: axes that keep their length are tied; a cut axis records its output as a piece [start, stop) of the
    input. Pieces that tile an axis are sections of it (a fused projection cut in two: GeGLU's input and gate);
    any other cut blocks the axis (`DimGraph.settle`)."""
    data, out = node.input[0], node.output[0]
    shape = ctx.shape(data)
    bounds = _slice_bounds(node, ctx)
    for axis, (before, after) in enumerate(zip(shape, ctx.shape(out))):
        if axis not in bounds:
            ctx.tie(data, axis, out, axis)
        elif bounds[axis] is None:
            ctx.block(data, axis, node, "cuts this axis with a step")
            ctx.block(out, axis, node, "cuts this axis with a step")
        else:
            start, fixed = bounds[axis]
            piece = Piece(ctx.dim(data, axis), start, start + after, ctx.dim(out, axis), node.name, fixed)
            ctx.dims.piece(piece)


def _slice_bounds(node: onnx.NodeProto, ctx: RuleContext) -> dict[int, tuple[int, bool] | None]:
    """Per sliced axis: (clamped start, whether the bounds are constants), or None for a step other than 1."""
    data = ctx.shape(node.input[0])
    inputs = list(node.input) + [""] * 5
    starts, ends = ctx.value(inputs[1]).tolist(), ctx.value(inputs[2]).tolist()
    axes = ctx.value(inputs[3]).tolist() if inputs[3] else list(range(len(starts)))
    steps = ctx.value(inputs[4]).tolist() if inputs[4] else [1] * len(starts)
    fixed = inputs[1] in ctx.static and inputs[2] in ctx.static
    bounds: dict[int, tuple[int, bool] | None] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= len(data)
        begin, stop, _ = slice(start, end, step).indices(data[axis])
        if (begin, stop, step) == (0, data[axis], 1):
            continue
        bounds[axis] = (begin, fixed) if step == 1 else None
    return bounds


def _reshape_blocks(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of source axes with runs of target axes that hold the same elements (size-1 axes dropped)."""
    blocks = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1:
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            j += 1
            continue
        if i >= len(src) or j >= len(dst):
            return []
        run_src, run_dst = [i], [j]
        left, right = src[i], dst[j]
        i, j = i + 1, j + 1
        while left != right:
            if left < right and i < len(src):
                left *= src[i]
                run_src.append(i)
                i += 1
            elif right < left and j < len(dst):
                right *= dst[j]
                run_dst.append(j)
                j += 1
            else:
                return []
        blocks.append((run_src, run_dst))
    return blocks


def reshape(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: axes kept whole are tied; split or merged axes are factorizations."""
    data, out = node.input[0], node.output[0]
    blocks = _reshape_blocks(ctx.shape(data), ctx.shape(out))
    if not blocks and ctx.shape(data) and np.prod(ctx.shape(data)) > 1:
        no_rule(node, ctx, "reshape whose axes cannot be matched")
        return
    for run_src, run_dst in blocks:
        if len(run_src) == 1 and len(run_dst) == 1:
            ctx.tie(data, run_src[0], out, run_dst[0])
        elif len(run_src) == 1:
            _factor_run(ctx, ctx.dim(data, run_src[0]), [ctx.dim(out, a) for a in run_dst])
        elif len(run_dst) == 1:
            _factor_run(ctx, ctx.dim(out, run_dst[0]), [ctx.dim(data, a) for a in run_src])
        else:
            for axis in run_src:
                ctx.block(data, axis, node, "reshape that regroups several axes at once")
            for axis in run_dst:
                ctx.block(out, axis, node, "reshape that regroups several axes at once")


def _factor_run(ctx: RuleContext, flat: int, parts: list[int]) -> None:
    """flat = parts[0] x parts[1] x ... (row-major), recorded as nested (outer, inner) pairs."""
    while len(parts) > 2:
        inner = ctx.dims.new(int(np.prod([ctx.dims.size[p] for p in parts[1:]])))
        ctx.dims.factor(flat, parts[0], inner)
        flat, parts = inner, parts[1:]
    ctx.dims.factor(flat, parts[0], parts[1])


def transpose(node: onnx.NodeProto, ctx: RuleContext) -> None:
    data, out = node.input[0], node.output[0]
    rank = len(ctx.shape(data))
    perm = _attr(node, "perm", list(reversed(range(rank))))
    for axis, source in enumerate(perm):
        ctx.tie(data, source, out, axis)


def concat_like(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Concat and Split: every axis but the joined one is tied; the joined axis is the parts laid end to end
    (sections), prunable when every part shrinks with the same units."""
    sources = _inputs(node)[:1] if node.op_type == "Split" else _inputs(node)
    targets = [o for o in node.output if o] if node.op_type == "Split" else node.output[:1]
    rank = len(ctx.shape(targets[0]))
    axis = _attr(node, "axis", 0) % rank
    for src in sources:
        for dst in targets:
            for k in range(rank):
                if k != axis:
                    ctx.tie(src, k, dst, k)
    flat, parts = (sources[0], targets) if node.op_type == "Split" else (targets[0], sources)
    ctx.dims.concatenate(ctx.dim(flat, axis), [ctx.dim(part, axis) for part in parts], node.name, node.op_type)


def reduce(node: onnx.NodeProto, ctx: RuleContext) -> None:
    data, out = node.input[0], node.output[0]
    rank = len(ctx.shape(data))
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.value(node.input[1]).tolist()
    axes = sorted(a % rank for a in (axes if axes else range(rank)))
    keep = _attr(node, "keepdims", 1)
    position = 0
    for axis in range(rank):
        if axis in axes:
            ctx.tag(data, axis, "normalized")
            position += 1 if keep else 0
            continue
        ctx.tie(data, axis, out, position)
        position += 1


def layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    data, out = node.input[0], node.output[0]
    rank = len(ctx.shape(data))
    axis = _attr(node, "axis", -1) % rank
    for k in range(rank):
        ctx.tie(data, k, out, k)
    for k in range(axis, rank):
        ctx.tag(data, k, "normalized")
    for param in _inputs(node)[1:3]:
        tie_broadcast(ctx, param, data)
    for extra in (o for o in node.output[1:] if o and o in ctx.values):
        for k in range(axis):
            ctx.tie(data, k, extra, k)


def skip_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """SkipLayerNormalization and SkipSimplifiedLayerNormalization (ONNX Runtime contrib): LayerNorm(input + skip
    [+ bias]) over the last axis; gamma, beta and bias run along it; outputs 2 and 3 (mean, inverse std) keep the
    leading axes; the optional 4th output is the sum (the residual stream)."""
    data = node.input[0]
    for other in [node.input[1], node.output[0]] + [o for o in node.output[3:4] if o]:
        for axis in range(len(ctx.shape(data))):
            ctx.tie(data, axis, other, axis)
    for param in _inputs(node)[2:]:
        tie_broadcast(ctx, param, data)
    for stat in (o for o in node.output[1:3] if o and o in ctx.values):  # mean, inverse std: (..., 1)
        for axis in range(len(ctx.shape(stat)) - 1):
            ctx.tie(data, axis, stat, axis)
    ctx.tag(data, -1, "normalized")
    ctx.tag(data, -1, "residual")


def embed_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """EmbedLayerNormalization (contrib): word + position (+ segment) embeddings, then LayerNorm. Inputs: ids,
    segment ids, word, position, segment tables, gamma, beta, mask, position ids; outputs: the embedding, a mask
    index, the sum before normalising."""
    ids, out = node.input[0], node.output[0]
    inputs = list(node.input) + [""] * 9
    tables = [name for name in inputs[2:5] if name]
    for k in range(2):
        ctx.tie(ids, k, out, k)
    for name in tables:
        ctx.tie(name, 1, out, 2)
        ctx.block(name, 0, node, "selects entries along this axis")
    for name in (n for n in inputs[5:7] if n):
        ctx.tie(name, 0, out, 2)
    if len(node.output) > 2 and node.output[2]:
        for axis in range(3):
            ctx.tie(out, axis, node.output[2], axis)
    ctx.tag(out, 2, "embedding")
    ctx.tag(out, 2, "normalized")


def attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Attention (contrib): input (B, S, H) times a packed [Q | K | V] weight (H, q + k + v) plus bias, split into
    `num_heads` heads each; output (B, S, v). The packed axis is three sections that shrink head by head."""
    data, weight, out = node.input[0], node.input[1], node.output[0]
    extra = [name for name in list(node.input)[4:] if name] + [o for o in node.output[1:] if o]
    if extra or weight not in ctx.static:
        no_rule(node, ctx, "Attention with past state, attention bias or a computed weight")
        return
    heads = _attr(node, "num_heads", 0)
    total = ctx.shape(weight)[1]
    sizes = list(_attr(node, "qkv_hidden_sizes", [total // 3] * 3))
    for k in range(2):
        ctx.tie(data, k, out, k)
    ctx.tie(data, -1, weight, 0)
    parts = [ctx.dims.new(size) for size in sizes]
    units = ctx.dims.new(heads)
    for part, size in zip(parts, sizes):
        ctx.dims.factor(part, units, ctx.dims.new(size // heads))
    ctx.dims.union(parts[2], ctx.dim(out, 2))
    ctx.dims.concatenate(ctx.dim(weight, 1), parts, node.name, node.op_type)
    if len(node.input) > 2 and node.input[2]:
        ctx.tie(node.input[2], 0, weight, 1)
    ctx.linears.append(LinearWeight(weight, 0, 1, ctx.node_index, data))


def multi_head_attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """MultiHeadAttention (contrib) on separate query (B, S, q), key (B, L, k) and value (B, L, v): each last axis
    is `num_heads` heads; the optional bias packs [q | k | v]; output (B, S, v). A decoder's past_key / past_value
    (B, heads, P, head size) and present_key / present_value (B, heads, P + L, head size) follow the heads; an
    attention bias (B or 1, heads or 1, S, T) follows them too; a key padding mask has no channel axis."""
    inputs = list(node.input) + [""] * 10
    query, key, value, out = inputs[0], inputs[1], inputs[2], node.output[0]
    extra = [inputs[9]] + [o for o in node.output[3:] if o]
    if any(extra) or not key or not value or any(len(ctx.shape(name)) != 3 for name in (query, key, value)):
        no_rule(node, ctx, "MultiHeadAttention with packed inputs, a cache indirection (beam search) or QK output")
        return
    units = ctx.dims.new(_attr(node, "num_heads", 0))
    inner = {}
    for name in (query, key, value):
        size = ctx.shape(name)[2]
        inner[name] = ctx.dims.new(size // ctx.dims.size[units])
        ctx.dims.factor(ctx.dim(name, 2), units, inner[name])
    ctx.tie(value, 2, out, 2)
    ctx.tie(query, 0, out, 0)
    ctx.tie(query, 1, out, 1)
    if inputs[3]:
        parts = [ctx.dim(name, 2) for name in (query, key, value)]
        ctx.dims.concatenate(ctx.dim(inputs[3], 0), parts, node.name, node.op_type)
    outputs = list(node.output) + [""] * 3
    for cache, source in ((inputs[6], key), (inputs[7], value), (outputs[1], key), (outputs[2], value)):
        if cache:
            ctx.tie(query, 0, cache, 0)
            ctx.dims.union(ctx.dim(cache, 1), units)
            ctx.dims.union(ctx.dim(cache, 3), inner[source])
    bias = inputs[5]
    if bias and ctx.shape(bias)[1] == ctx.dims.size[units]:
        ctx.dims.union(ctx.dim(bias, 1), units)
    elif bias and ctx.shape(bias)[1] != 1:
        ctx.block(bias, 1, node, "attention bias with an unexpected heads axis")


def rotary_embedding(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """RotaryEmbedding (contrib: input, position ids, cos, sin; ONNX 23: input, cos, sin, position ids) rotates
    channel pairs inside each head; output shaped as the input. On (B, heads, S, head size) every axis just passes
    through; on (B, S, heads x head size) the last axis is `num_heads` heads (0: as many as the cos cache's head
    size fills), so heads shrink whole and the head size is never cut."""
    data, out = node.input[0], node.output[0]
    shape = ctx.shape(data)
    for axis in range(len(shape)):
        ctx.tie(data, axis, out, axis)
    if len(shape) != 3:
        return
    cos = node.input[1] if node.domain in ("", "ai.onnx") else node.input[2]
    heads = _attr(node, "num_heads", 0) or shape[2] // (2 * ctx.shape(cos)[-1])
    if not heads or shape[2] % heads:
        ctx.block(data, 2, node, "a head count that does not divide the rotated axis")
        return
    ctx.dims.factor(ctx.dim(data, 2), ctx.dims.new(heads), ctx.dims.new(shape[2] // heads))


def group_query_attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """GroupQueryAttention (contrib): query (B, S, q) packs [Q | K | V] when key and value are absent, else Q alone
    with key (B, S, k) and value (B, S, v). Q is `num_heads` heads, which are `kv_num_heads` KV groups of query heads
    (so a unit keeps a KV head and the query heads that read it); K and V are `kv_num_heads` heads; the caches
    (B, kv_heads, length, head_size) follow the KV heads; output (B, S, q). The head size is never cut (rotary,
    cos/sin caches, and ONNX Runtime's kernel want it whole)."""
    inputs = list(node.input) + [""] * 12
    query, out = inputs[0], node.output[0]
    heads, kv_heads = _attr(node, "num_heads", 0), _attr(node, "kv_num_heads", 0)
    if not heads or not kv_heads or heads % kv_heads or len(ctx.shape(query)) != 3:
        no_rule(node, ctx, "GroupQueryAttention with a packed query of another rank or head counts that do not divide")
        return
    packed = not inputs[1]
    width = ctx.shape(query)[2]
    head_size = width // (heads + 2 * kv_heads) if packed else width // heads
    groups = ctx.dims.new(kv_heads)
    query_heads = ctx.dims.new(heads)
    ctx.dims.factor(query_heads, groups, ctx.dims.new(heads // kv_heads))
    inner = ctx.dims.new(head_size)
    q_part = ctx.dim(out, 2)
    ctx.dims.factor(q_part, query_heads, inner)
    k_part = ctx.dims.new(kv_heads * head_size) if packed else ctx.dim(inputs[1], 2)
    v_part = ctx.dims.new(kv_heads * head_size) if packed else ctx.dim(inputs[2], 2)
    for part in (k_part, v_part):
        ctx.dims.factor(part, groups, inner)
    if packed:
        ctx.dims.concatenate(ctx.dim(query, 2), [q_part, k_part, v_part], node.name, node.op_type)
    else:
        ctx.tie(query, 2, out, 2)
    for name in [query, *(n for n in inputs[1:3] if n)]:
        ctx.tie(name, 0, out, 0)
        ctx.tie(name, 1, out, 1)
    for cache in [n for n in inputs[3:5] if n] + [o for o in node.output[1:3] if o]:
        ctx.tie(query, 0, cache, 0)
        ctx.dims.union(ctx.dim(cache, 1), groups)
        ctx.dims.union(ctx.dim(cache, 3), inner)
    sink = inputs[11]
    if sink:
        ctx.dims.union(ctx.dim(sink, 0), query_heads)
    bias = inputs[10]
    if bias and ctx.shape(bias)[1] == heads:
        ctx.dims.union(ctx.dim(bias, 1), query_heads)
    elif bias and ctx.shape(bias)[1] != 1:
        ctx.block(bias, 1, node, "attention bias with an unexpected heads axis")


def expand(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Expand: kept axes are tied; an axis stretched to a size computed at run time from another axis is that
    axis; one stretched to a constant size cannot follow a pruned axis."""
    data, out = node.input[0], node.output[0]
    src, dst = ctx.shape(data), ctx.shape(out)
    offset = len(dst) - len(src)
    spelled = entries(ctx, node.input[1]) or []
    spelled = [None] * (len(dst) - len(spelled)) + spelled
    for axis in range(len(dst)):
        k = axis - offset
        if k >= 0 and src[k] == dst[axis]:
            ctx.tie(data, k, out, axis)
        elif not _follows(ctx, ctx.dim(out, axis), spelled[axis]):
            ctx.block(out, axis, node, "its shape input spells this axis's size")


def _follows(ctx: RuleContext, dim: int, entry: Entry) -> bool:
    """Tie `dim` to the run-time size `entry` spells, when it spells one (a quotient or a product once the
    factorizations settle)."""
    if isinstance(entry, Size):
        ctx.dims.union(dim, entry.dim)
    elif isinstance(entry, Quotient | Product):
        entry.users.append(dim)
        if entry not in ctx.dims.scaled:
            ctx.dims.scaled.append(entry)
    return isinstance(entry, Size | Quotient | Product)


def tile(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Tile: an axis repeated r times is (r, the input's axis), row-major, as a Reshape would split it; r is a
    constant or a size computed at run time (DeBERTa tiles the relative position projections, (heads, ...), to
    the (batch x heads, ...) of its attention, with r = (batch x heads) // heads)."""
    data, out = node.input[0], node.output[0]
    repeats = entries(ctx, node.input[1])
    for axis, (before, after) in enumerate(zip(ctx.shape(data), ctx.shape(out))):
        entry = repeats[axis] if repeats else None
        if entry == 1:
            ctx.tie(data, axis, out, axis)
            continue
        repeat = ctx.dims.new(after // max(before, 1))
        if before and (isinstance(entry, int) or _follows(ctx, repeat, entry)) and after > before:
            ctx.dims.factor(ctx.dim(out, axis), repeat, ctx.dim(data, axis))
        else:
            reason = "repeats this axis a number of times computed in a way the analysis cannot follow"
            ctx.block(data, axis, node, reason)
            ctx.block(out, axis, node, reason)


def gather_elements(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """GatherElements: the output has the indices' shape; along `axis` it selects entries of the data (blocked);
    along other axes it reads the data at the same index: tied where their lengths agree, else a leading part."""
    data, indices, out = node.input[0], node.input[1], node.output[0]
    rank = len(ctx.shape(data))
    axis = _attr(node, "axis", 0) % rank
    for k in range(rank):
        ctx.tie(indices, k, out, k)
        if k == axis:
            ctx.block(data, k, node, "selects entries along this axis")
        elif ctx.shape(data)[k] == ctx.shape(out)[k]:
            ctx.tie(data, k, out, k)
        else:
            ctx.block(data, k, node, "reads a leading part of this axis")
            ctx.block(out, k, node, "reads a leading part of this axis")


def conv(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Conv (a patch embedding): output channels are the weight's axis 0 and the bias; input channels its axis 1
    (when not grouped); spatial axes are convolved, so they cannot be pruned."""
    data, weight, out = node.input[0], node.input[1], node.output[0]
    ctx.tie(data, 0, out, 0)
    ctx.tie(weight, 0, out, 1)
    if len(node.input) > 2 and node.input[2]:
        ctx.tie(node.input[2], 0, out, 1)
    if _attr(node, "group", 1) == 1:
        ctx.tie(data, 1, weight, 1)
    else:
        ctx.block(data, 1, node, "grouped convolution")
    for axis in range(2, len(ctx.shape(data))):
        ctx.block(data, axis, node, "convolves along this axis")
        ctx.block(out, axis, node, "convolves along this axis")


def sizes_only(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Shape, Size, ConstantOfShape, Range: outputs depend on sizes, never on channel values."""


def no_rule(node: onnx.NodeProto, ctx: RuleContext, reason: str | None = None) -> None:
    reason = reason or f"no pruning rule for operator {node.op_type}"
    for name in _inputs(node) + [o for o in node.output if o]:
        if name in ctx.values:
            for axis in range(len(ctx.shape(name))):
                ctx.block(name, axis, node, reason)


UNARY = (
    "Abs Acos Asin Atan Cast CastLike Ceil Clip Cos Dropout Elu Erf Exp Floor Gelu HardSigmoid HardSwish Identity "
    "IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Softplus Softsign Sqrt Tan "
    "Tanh ThresholdedRelu QuickGelu"
).split()
BROADCAST = (
    "Add And BiasGelu BitShift Div Equal FastGelu Greater GreaterOrEqual Less LessOrEqual Max Min Mod Mul Or Pow Sub "
    "Sum Where Xor"
)
REDUCE = (
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare"
)

RULES: dict[str, Rule] = {
    **{op: same_shape for op in UNARY},
    **{op: elementwise for op in BROADCAST.split()},
    **{op: reduce for op in REDUCE.split()},
    **{op: reshape for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")},
    **{op: sizes_only for op in ("Shape", "Size", "ConstantOfShape", "Range", "NonZero")},
    "Slice": slice_,
    "Pad": pad,
    **{op: concat_like for op in ("Concat", "Split")},
    **{op: layer_norm for op in ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization")},
    "Softmax": along_axis("normalises over this axis"),
    "LogSoftmax": along_axis("normalises over this axis"),
    "CumSum": along_axis("accumulates along this axis"),
    "MatMul": matmul,
    "Gemm": gemm,
    "MatMulNBits": matmul_nbits,
    "Gather": gather,
    "GatherElements": gather_elements,
    "GatherND": gather_nd,
    "Tile": tile,
    "GatherBlockQuantized": gather_block_quantized,
    "Transpose": transpose,
    "Expand": expand,
    "Conv": conv,
    "SkipLayerNormalization": skip_layer_norm,
    "SkipSimplifiedLayerNormalization": skip_layer_norm,
    "EmbedLayerNormalization": embed_layer_norm,
    "Attention": attention,
    "MultiHeadAttention": multi_head_attention,
    "GroupQueryAttention": group_query_attention,
    "RotaryEmbedding": rotary_embedding,
}


def apply_rule(node: onnx.NodeProto, ctx: RuleContext) -> None:
    rule = RULES.get(node.op_type)
    if rule is None or any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute
    ):
        no_rule(node, ctx)
    else:
        rule(node, ctx)
