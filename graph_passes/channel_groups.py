"""Channel groups: everything in a model that must shrink together, found by one walk of the graph."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from graph_passes.cache_state import CACHE_INPUT, decoder_feeds, is_cache
from graph_passes.dims import Blocker, DimGraph
from graph_passes.errors import UnsupportedGraphError
from graph_passes.model_io import normalize
from graph_passes.op_rules import RULES, LinearWeight, RuleContext, apply_rule
from graph_passes.shape_arithmetic import track
from graph_passes.shape_probe import ProbedValues, dummy_inputs, probe_values

FLAT, UNITS, WITHIN, SECTIONS = "flat", "units", "within", "sections"


@dataclass(frozen=True)
class Member:
    """One axis of one tensor in a group. `view`: flat (units x width), units (one entry per unit), within, or
    sections (several flat parts end to end, e.g. packed Q, K, V)."""

    tensor: str
    axis: int
    view: str
    width: int = 1


@dataclass
class ChannelGroup:
    """Coupled channels. Masks keep whole units: a head (width = head size) or a neuron (width 1)."""

    id: int
    kind: str
    layer: int | None
    units: int
    width: int
    dims: dict[int, tuple[str, int]]
    params: list[Member] = field(default_factory=list)
    activations: list[Member] = field(default_factory=list)
    readers: list[str] = field(default_factory=list)
    writers: list[str] = field(default_factory=list)
    interface: list[str] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)  # a decoder's KV cache inputs and outputs it resizes
    blockers: list[Blocker] = field(default_factory=list)
    sections: dict[int, list[int]] = field(default_factory=dict)  # sections dim -> unit width of each part

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}[{self.layer}]"

    @property
    def size(self) -> int:
        return self.units * self.width

    @property
    def prunable(self) -> bool:
        return not self.blockers and not self.interface

    def kept_on(self, dim: int, mask: np.ndarray) -> np.ndarray:
        """Indices kept along the group's dimension `dim` when `mask` keeps units, in axis order."""
        view, width = self.dims[dim]
        if view != SECTIONS:
            return _kept_indices(mask, view, width)
        offsets = np.cumsum([0] + [self.units * w for w in self.sections[dim]])
        return np.concatenate([o + _kept_indices(mask, FLAT, w) for o, w in zip(offsets, self.sections[dim])])

    def unit_major(self, dim: int) -> np.ndarray:
        """The axis's indices reordered unit by unit (unit 0's entries, then unit 1's...)."""
        if self.dims[dim][0] != SECTIONS:  # flat and units axes are already unit-major
            return np.arange(self.units * self.dims[dim][1] if self.dims[dim][0] == FLAT else self.units)
        units = [self.kept_on(dim, np.arange(self.units) == u) for u in range(self.units)]
        return np.concatenate(units)


def _kept_indices(mask: np.ndarray, view: str, width: int) -> np.ndarray:
    kept = np.flatnonzero(mask)
    if view == UNITS:
        return kept
    return (kept[:, None] * width + np.arange(width)[None, :]).reshape(-1)


@dataclass
class GraphAnalysis:
    """The normalised model, its groups, and what the slicer needs to rewrite it."""

    model: onnx.ModelProto
    groups: list[ChannelGroup]
    dims: DimGraph
    values: ProbedValues  # a mapping of name -> array
    static: set[str]
    unsupported: list[Blocker]
    linears: list[LinearWeight]

    def group(self, name: str) -> ChannelGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"no group named {name!r}; groups: {', '.join(g.name for g in self.groups)}")

    def by_kind(self, kind: str) -> list[ChannelGroup]:
        return [g for g in self.groups if g.kind == kind]

    def linear(self, weight: str) -> LinearWeight:
        """The first application of `weight` (in graph order)."""
        return next(w for w in self.linears if w.weight == weight)

    def uses(self, weight: str) -> list[LinearWeight]:
        """Every application of `weight`, in graph order: several when layers share it (ALBERT)."""
        return sorted((w for w in self.linears if w.weight == weight), key=lambda w: w.node_index)

    def group_of_axis(self, tensor: str, axis: int) -> ChannelGroup | None:
        """The group an axis belongs to (None when it belongs to none, or only as the inside of a unit)."""
        root = self.dims.find(self.dims.axes[(tensor, axis)])
        return next((g for g in self.groups if g.dims.get(root, ("within",))[0] != "within"), None)


def static_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from initializers alone (weights, shape constants), in the graph's topological order."""
    static = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.input and all(not name or name in static for name in node.input):
            static.update(o for o in node.output if o)
    return static


def analyze(model: onnx.ModelProto) -> GraphAnalysis:
    """Find every channel group of `model` and what blocks each one."""
    model = normalize(model)
    values = probe_values(model, decoder_feeds(model, dummy_inputs(model)) if _is_decoder(model) else None)
    static = static_tensors(model)
    ctx = RuleContext(DimGraph(), values, static)
    unsupported = []
    for index, node in enumerate(model.graph.node):
        ctx.node_index = index
        if node.op_type not in RULES:
            unsupported.append(Blocker(node.name, node.op_type, f"no pruning rule for operator {node.op_type}"))
        if all(name in values for name in node.output if name):
            apply_rule(node, ctx)
            track(node, ctx)
    ctx.dims.settle()
    groups = _collect_groups(model, ctx)
    return GraphAnalysis(model, groups, ctx.dims, values, static, unsupported, ctx.linears)


def _is_decoder(model: onnx.ModelProto) -> bool:
    """A model with KV cache inputs, or GroupQueryAttention nodes (which read them)."""
    return any(CACHE_INPUT.fullmatch(v.name) for v in model.graph.input) or any(
        node.op_type == "GroupQueryAttention" for node in model.graph.node
    )


def _collect_groups(model: onnx.ModelProto, ctx: RuleContext) -> list[ChannelGroup]:
    dims = ctx.dims
    roles = _roles(dims)
    float_params = {
        t.name for t in model.graph.initializer if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"
    }
    graph_io = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    members: dict[int, list[Member]] = defaultdict(list)
    touches: dict[int, set[str]] = defaultdict(set)
    for (tensor, axis), dim in dims.axes.items():
        role = roles.get(dims.find(dim))
        if role is None:
            continue
        key, view, width = role
        if tensor in graph_io and view != WITHIN:
            touches[key].add(tensor)
        members[key].append(Member(tensor, axis, view, width))
    tags = defaultdict(set)
    for tensor, axis, tag in ctx.tags:
        tags[roles[dims.find(dims.axes[(tensor, axis)])][0]].add(tag)
    groups = []
    for key, found in members.items():
        params = [m for m in found if m.tensor in float_params and m.view != WITHIN]
        activations = [m for m in found if m.tensor not in ctx.static]
        if not params or not activations or dims.size[key] <= 1:
            continue
        group_dims = {d: (view, width) for d, (k, view, width) in roles.items() if k == key}
        sections = {
            flat: [roles[part][2] for part in parts]
            for flat, parts in dims.sections
            if roles[flat][:2] == (key, SECTIONS)
        }
        has_units = any(view == UNITS for view, _ in group_dims.values())
        width = max(w for view, w in group_dims.values() if view == FLAT)
        blockers = [b for d, (view, _) in group_dims.items() if view != WITHIN for b in dims.blockers_of(d)]
        kind = "heads" if has_units else ("hidden" if {"normalized", "residual"} <= tags[key] else "dense")
        groups.append(
            ChannelGroup(
                id=key,
                kind=kind,
                layer=None,
                units=dims.size[key],
                width=width,
                dims=group_dims,
                params=sorted(set(params), key=_member_order),
                activations=activations,
                interface=sorted(t for t in touches[key] if not is_cache(t)),
                cache=sorted(t for t in touches[key] if is_cache(t)),
                blockers=_unique(blockers),
                sections=sections,
            )
        )
    _block_unaligned_quantization(groups, dims)
    _block_units_nested_in_another_group(groups, dims)
    _one_hidden_stream(groups)
    _link_weights(groups, ctx)
    _classify(groups, {w.weight: w.node_index for w in ctx.linears})
    return sorted(groups, key=lambda g: (_KIND_ORDER.index(g.kind), g.layer if g.layer is not None else -1))


_KIND_ORDER = ["hidden", "heads", "ffn", "dense", "output"]


def _roles(dims: DimGraph) -> dict[int, tuple[int, str, int]]:
    """Map each dimension class to (its group's key, its view in that group, its unit width).

    A blocked group is keyed by its units (the heads axis): every flat axis split as (heads, head_dim) with
    the same heads belongs to it, whatever its head_dim (queries and keys share one, values another). An axis
    made of sections belongs to its parts' group when they all are flat axes of one group; otherwise it and its
    parts cannot be pruned.
    """
    roles: dict[int, tuple[int, str, int]] = {}
    split = {flat: (outer, inner) for flat, outer, inner in dims.factors if dims.size[outer] > 1 < dims.size[inner]}
    for flat, (outer, inner) in split.items():
        units = _units_of(outer, split)
        roles.setdefault(units, (units, UNITS, 1))
        roles[flat] = (roles[units][0], FLAT, dims.size[flat] // dims.size[units])
        roles.setdefault(inner, (roles[units][0], WITHIN, dims.size[inner]))
    packed = {flat for flat, _ in dims.sections}
    for dim in range(len(dims.parent)):
        root = dims.find(dim)
        if root not in packed:
            roles.setdefault(root, (root, FLAT, 1))
    for flat, parts in dims.sections:
        keys = {roles.get(part, (None, None, 0))[:2] for part in parts}
        key = next(iter(keys))
        if len(keys) == 1 and key[1] == FLAT and roles.get(flat, (key[0], SECTIONS))[:2] == (key[0], SECTIONS):
            roles[flat] = (key[0], SECTIONS, 0)
            continue
        for dim in (flat, *parts):
            dims.block(dim, dims.packer(flat, "joins or splits parts that do not shrink together"))
    for flat, _ in dims.sections:
        roles.setdefault(flat, (flat, FLAT, 1))
    return roles


def _units_of(dim: int, split: dict[int, tuple[int, int]]) -> int:
    """The outermost factor of `dim`: heads that are themselves (kv_heads, repeat), as grouped-query attention
    repeats each KV head for several query heads, are units of KV heads, so masks keep whole KV groups."""
    seen = {dim}
    while dim in split and split[dim][0] not in seen:
        dim = split[dim][0]
        seen.add(dim)
    return dim


def _member_order(member: Member) -> tuple[str, int]:
    return member.tensor, member.axis


def _unique(blockers: list[Blocker]) -> list[Blocker]:
    return list(dict.fromkeys(blockers))


def _block_unaligned_quantization(groups: list[ChannelGroup], dims: DimGraph) -> None:
    """MatMulNBits reads its input channels in blocks: a group can drop whole blocks only, so its units must tile the
    blocks (a unit of whole blocks, or blocks of whole units, which the slicer then checks mask by mask)."""
    for dim, block, node in dims.quantized:
        root = dims.find(dim)
        group = next((g for g in groups if g.dims.get(root, (WITHIN,))[0] != WITHIN), None)
        if group is None or not block:
            continue
        view, width = group.dims[root]
        width = 1 if view == UNITS else width
        if view == SECTIONS or (width % block and block % width):
            shown = "packed in sections" if view == SECTIONS else f"{width} wide"
            reason = f"input channels are quantized in blocks of {block}; its group's units are {shown}"
            group.blockers.append(Blocker(node, "MatMulNBits", reason))


def _block_units_nested_in_another_group(groups: list[ChannelGroup], dims: DimGraph) -> None:
    """An axis split as (k, rest) whose rest is itself split into units, as a fused Q, K, V reshaped to
    (3, heads, head_dim) and not cut into sections, belongs to the group of k: a mask on those units could not slice
    it, so neither group may be pruned."""
    split = {flat: (outer, inner) for flat, outer, inner in dims.factors}
    owner_of = {d: g for g in groups for d, (view, _) in g.dims.items() if view != WITHIN}
    for flat, (_, inner) in split.items():
        owner, nested = owner_of.get(flat), owner_of.get(split.get(inner, (None,))[0])
        if owner is not None and nested is not None and owner is not nested:
            reason = f"its units sit inside an axis of another group, split as ({dims.size[split[flat][0]]}, ...)"
            nested.blockers.append(Blocker("", "Reshape", reason))
            owner.blockers.append(Blocker("", "Reshape", "an axis of it holds the units of another group"))


def _one_hidden_stream(groups: list[ChannelGroup]) -> None:
    """The encoder's residual stream is the normalised, summed group with the most parameters; another one (ALBERT's
    embeddings, summed and normalised before their projection into the stream) is a dense group."""
    streams = sorted((g for g in groups if g.kind == "hidden"), key=lambda g: -len(g.params))
    for group in streams[1:]:
        group.kind = "dense"


def _link_weights(groups: list[ChannelGroup], ctx: RuleContext) -> None:
    """Record, per group, the linear weights that read it (rows) and write it (columns), in graph order."""
    dims = ctx.dims
    by_dim = {d: g for g in groups for d, (view, _) in g.dims.items() if view != WITHIN}
    for linear in sorted(ctx.linears, key=lambda w: w.node_index):
        rows = (linear.activation, len(ctx.shape(linear.activation)) - 1) if linear.bits else None
        read = by_dim.get(dims.find(dims.axes[rows or (linear.weight, linear.in_axis)]))
        written = by_dim.get(dims.find(dims.axes[(linear.weight, linear.out_axis)]))
        if read is not None and linear.weight not in read.readers:
            read.readers.append(linear.weight)
        if written is not None and linear.weight not in written.writers:
            written.writers.append(linear.weight)


def _classify(groups: list[ChannelGroup], weight_position: dict[str, int]) -> None:
    """Name dense groups by where they sit (FFN between two hidden projections, model outputs) and number layers."""
    for group in groups:
        if group.kind != "dense":
            continue
        if group.interface:
            group.kind = "output"
        elif _is_between(group, groups):
            group.kind = "ffn"
    for kind in ("heads", "ffn"):
        ranked = sorted(
            (g for g in groups if g.kind == kind),
            key=lambda g: min((weight_position[w] for w in g.writers), default=len(weight_position)),
        )
        for layer, group in enumerate(ranked):
            group.layer = layer
    for kind in ("dense", "output"):
        ranked = [g for g in groups if g.kind == kind]
        for index, group in enumerate(ranked):
            group.layer = index


def _is_between(group: ChannelGroup, groups: list[ChannelGroup]) -> bool:
    """An FFN's neurons are written from the hidden stream and read back into it."""
    hidden = [g for g in groups if g.kind == "hidden"]
    return any(set(group.writers) & set(h.readers) and set(group.readers) & set(h.writers) for h in hidden)


def require_prunable(analysis: GraphAnalysis) -> None:
    """Raise when the model has nothing that can be pruned, naming what stops it."""
    if any(g.prunable for g in analysis.groups):
        return
    blocker = next((b for g in analysis.groups for b in g.blockers), None)
    detail = f" ({blocker.describe()})" if blocker else ""
    raise UnsupportedGraphError(f"the model has no prunable channel group{detail}")
