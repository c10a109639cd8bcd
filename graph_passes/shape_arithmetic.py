"""Shape arithmetic: which run-time sizes the small integer tensors of a graph spell.

Exporters compute shapes at run time (Shape -> Gather -> Div -> Concat -> Tile/Expand). An entry of such a tensor
is a constant, the size of a dimension class (it follows pruning by itself), a quotient of a dimension's size by a
constant (`batch x heads // heads`) or a product of one with a constant (`heads x batch`): the constant then spells
one factor of a dimension, and must be rewritten when the factor is pruned. Anything else is unknown, and the rules that read it stay conservative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

# Shape vectors and scalars only: larger integer tensors are data (token ids, position indices).
MAX_ENTRIES = 8


@dataclass(frozen=True)
class Size:
    """The run-time size of dimension class `dim`."""

    dim: int


@dataclass(eq=False)
class Quotient:
    """size(`flat`) // `divisor`, the constant second input of the Div node `node` (number `index` in the graph).
    After the factorizations settle, the divisor spells one factor of `flat` and the quotient is the other
    (`DimGraph`); `users` are dimensions whose size the quotient gives."""

    flat: int
    divisor: int
    node: str
    index: int
    users: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Product:
    """size(`dim`) x `factor`, the constant input `slot` of the Mul node `node` (number `index`): after the
    factorizations settle, each user is a dimension that factors as (`dim`, factor) or (factor, `dim`), and the
    constant spells that factor (`DimGraph`)."""

    dim: int
    factor: int
    node: str
    index: int
    slot: int
    users: list[int] = field(default_factory=list)


Entry = int | Size | Quotient | Product | None


def entries(ctx, name: str) -> list[Entry] | None:
    """The entries of a small integer tensor (`ctx`: a rule context): tracked ones, or a constant's values; None
    when not known."""
    if name in ctx.sizes:
        return ctx.sizes[name]
    if name in ctx.static and name in ctx.values:
        value = np.asarray(ctx.values[name])
        if value.dtype.kind in "iu" and value.size <= MAX_ENTRIES:
            return [int(v) for v in value.reshape(-1)]
    return None


def track(node: onnx.NodeProto, ctx) -> None:
    """Record in `ctx.sizes` what the outputs of a shape-arithmetic node spell (nothing for other nodes)."""
    handler = _HANDLERS.get(node.op_type)
    out = node.output[0] if node.output else ""
    if handler is None or not out or out in ctx.static or out not in ctx.values:
        return
    value = np.asarray(ctx.values[out])
    if value.dtype.kind not in "iub" or value.size > MAX_ENTRIES:
        return
    found = handler(node, ctx)
    if found is not None and len(found) == value.size:
        ctx.sizes[out] = found


def _of(ctx, name: str) -> list[Entry] | None:
    return entries(ctx, name) if name else None


def _shape(node: onnx.NodeProto, ctx) -> list[Entry]:
    data = node.input[0]
    rank = len(ctx.values[data].shape)
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    return [Size(ctx.dim(data, axis)) for axis in range(rank)[slice(start, end)]]


def _same_entries(node: onnx.NodeProto, ctx) -> list[Entry] | None:
    """Cast, Identity, Squeeze, Unsqueeze, Reshape, Flatten: the same entries in the same order."""
    return _of(ctx, node.input[0])


def _gather(node: onnx.NodeProto, ctx) -> list[Entry] | None:
    data, indices = _of(ctx, node.input[0]), node.input[1]
    if data is None or indices not in ctx.static or len(ctx.values[node.input[0]].shape) != 1:
        return None
    return [data[int(i)] for i in np.asarray(ctx.values[indices]).reshape(-1)]


def _slice(node: onnx.NodeProto, ctx) -> list[Entry] | None:
    data = _of(ctx, node.input[0])
    inputs = list(node.input) + [""] * 5
    if data is None or any(name and name not in ctx.static for name in inputs[1:5]):
        return None
    start, end = int(ctx.values[inputs[1]][0]), int(ctx.values[inputs[2]][0])
    step = int(ctx.values[inputs[4]][0]) if inputs[4] else 1
    return data[slice(start, end, step)]


def _concat(node: onnx.NodeProto, ctx) -> list[Entry] | None:
    parts = [_of(ctx, name) for name in node.input]
    return None if any(part is None for part in parts) else [e for part in parts for e in part]


def _constant_of_shape(node: onnx.NodeProto, ctx) -> list[Entry]:
    """Its values are its attribute's (its input only says how many)."""
    return [int(v) for v in np.asarray(ctx.values[node.output[0]]).reshape(-1)]


def _arithmetic(node: onnx.NodeProto, ctx) -> list[Entry] | None:
    """Mul, Div, Add, Sub, Equal, Where, entry by entry (with broadcasting of single entries)."""
    operands = [_of(ctx, name) for name in node.input]
    if any(op is None for op in operands):
        return None
    count = max(len(op) for op in operands)
    if any(len(op) not in (1, count) for op in operands):
        return None
    rows = [[op[k if len(op) > 1 else 0] for op in operands] for k in range(count)]
    return [_combine(node, ctx, row) for row in rows]


def _combine(node: onnx.NodeProto, ctx, row: list[Entry]) -> Entry:
    op = node.op_type
    if all(isinstance(e, int) for e in row):
        return int(_CONSTANT_OPS[op](*row))
    if op == "Where":
        condition, chosen, other = row
        return None if not isinstance(condition, int) else (chosen if condition else other)
    left, right = row
    if op == "Equal":  # a size is never negative
        constant = left if isinstance(left, int) else right
        return 0 if isinstance(constant, int) and constant < 0 else None
    if op in ("Mul", "Div") and right == 1 or op in ("Add", "Sub") and right == 0:
        return left
    if op == "Mul" and left == 1 or op == "Add" and left == 0:
        return right
    if op == "Div" and isinstance(left, Size) and isinstance(right, int) and right > 1 and node.input[1] in ctx.static:
        return Quotient(left.dim, right, node.name, ctx.node_index)
    if op == "Mul":  # a size times a constant: (batch x heads) written as heads x batch
        for slot, (size, constant) in enumerate(((right, left), (left, right))):
            if isinstance(size, Size) and isinstance(constant, int) and constant > 1 and node.input[slot] in ctx.static:
                return Product(size.dim, constant, node.name, ctx.node_index, slot)
    return None


_CONSTANT_OPS = {
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a // b,
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Equal": lambda a, b: a == b,
    "Where": lambda c, a, b: a if c else b,
}

_HANDLERS = {
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    "ConstantOfShape": _constant_of_shape,
    **{op: _same_entries for op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten")},
    **{op: _arithmetic for op in _CONSTANT_OPS},
}
