"""The --keep budget: a fraction of the encoder's prunable weight parameters, turned into kept units per group.

The encoder's prunable weights are the matrices that read or write a layer's heads or FFN neurons (Q, K, V, output
projection, FFN up and down). A matrix keeps (kept rows) x (kept columns), so pruning the hidden stream shrinks all
of them at once. Allocation is uniform: every pruned group keeps the same fraction of its units, rounded to whole
units, then single units are added or removed until the total is as close to the budget as units allow. The hidden
stream may be given its own share (`stream_share`: the pipeline cuts it a sixth as deep as the budget), the heads and
neurons then taking the rest. `reallocate` then moves units between groups (global allocation) by per-unit
losses that the scorer measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compressor.errors import BudgetError
from graph_passes import GraphAnalysis

GRANULARITIES = ("heads", "ffn", "hidden")
TOLERANCE = 0.01
STREAM_DEPTH = 1 / 6  # how deep the hidden stream is cut, relative to the budget's cut (`stream_share`)


@dataclass(frozen=True)
class Matrix:
    """An encoder weight matrix: its shape and the groups (or None) its two axes belong to."""

    weight: str
    rows: int
    cols: int
    row_group: str | None
    col_group: str | None


def encoder_matrices(analysis: GraphAnalysis) -> list[Matrix]:
    weights = dict.fromkeys(
        w for kind in ("heads", "ffn") for g in analysis.by_kind(kind) for w in g.writers + g.readers
    )
    matrices = []
    for weight in weights:
        linear = analysis.linear(weight)
        shape = analysis.values[weight].shape
        row, col = (analysis.group_of_axis(weight, a) for a in (linear.in_axis, linear.out_axis))
        matrices.append(
            Matrix(weight, shape[linear.in_axis], shape[linear.out_axis], row and row.name, col and col.name)
        )
    return matrices


def parameter_count(analysis: GraphAnalysis, matrices: list[Matrix], kept: dict[str, int]) -> int:
    """Weights left in the encoder matrices when each named group keeps `kept[name]` units."""

    def size(full: int, group: str | None) -> float:
        if group is None or group not in kept:
            return full
        return full * kept[group] / analysis.group(group).units

    return int(sum(size(m.rows, m.row_group) * size(m.cols, m.col_group) for m in matrices))


def stream_share(keep: float) -> float:
    """The share of the hidden stream kept at `keep` when heads and neurons are pruned beside it: 0.9 at keep 0.4.
    Every channel the stream loses costs more than the weights it frees spent on heads and neurons would: on
    minilm-sst2 (SST-2 dev / 2,000 held-out train sentences, mean of three draws) keep 0.4 measured 0.8421 / 0.8767
    with the uniform share (0.64 of the stream), 0.8490 / 0.8937 keeping 0.8, 0.8536 / 0.9017 keeping 0.9, 0.8624 /
    0.9032 keeping 0.95, and 0.8712 / 0.903 keeping it whole (BENCHMARKS.md, the hidden stream); on stories260k,
    perplexity 8.997 / 28.86 at keep 0.8 / 0.6 with the uniform share, 7.95 / 20.15 with this one, 6.65 / 15.08 with
    the stream whole (BENCHMARKS.md, decoder notes)."""
    return 1 - (1 - keep) * STREAM_DEPTH


def allocate(
    analysis: GraphAnalysis, keep: float, granularity: tuple[str, ...], stream: float | None = None
) -> dict[str, int]:
    """Kept units per group so that the encoder keeps `keep` of its prunable weights (within 1%). `stream`: the
    share of the hidden stream's channels to keep when it is pruned, the other groups sharing the rest of the budget
    (every group the same share when None, or when the others cannot reach the budget so)."""
    if not 0 < keep <= 1:
        raise BudgetError(f"--keep must be in (0, 1]; got {keep}")
    unknown = [g for g in granularity if g not in GRANULARITIES]
    if unknown:
        raise BudgetError(f"unknown granularity {unknown[0]!r}; choose from {', '.join(GRANULARITIES)}")
    groups = [g for kind in granularity for g in analysis.by_kind(kind) if g.prunable]
    matrices = encoder_matrices(analysis)
    full = parameter_count(analysis, matrices, {})
    if not groups or not full:
        raise BudgetError(
            f"the model has no {'+'.join(granularity)} group to prune (no attention heads or FFN neurons between "
            "linear layers that can shrink); see compress inspect"
        )
    target = keep * full
    others = [g for g in groups if g.kind != "hidden"]
    if stream is not None and others and len(others) < len(groups):
        fixed = {g.name: max(1, round(stream * g.units)) for g in groups if g.kind == "hidden"}
        kept = _spread(analysis, matrices, others, fixed, target)
        if abs(parameter_count(analysis, matrices, kept) / full - keep) <= TOLERANCE:
            return kept
    kept = _spread(analysis, matrices, groups, {}, target)
    achieved = parameter_count(analysis, matrices, kept) / full
    if abs(achieved - keep) > TOLERANCE:
        lowest = parameter_count(analysis, matrices, {g.name: 1 for g in groups}) / full
        uniform = (
            "; a decoder keeps the same number of KV heads in every layer"
            if any(len(b) > 1 for b in _bundles(groups))
            else ""
        )
        raise BudgetError(
            f"--keep {keep} cannot be reached by pruning {'+'.join(granularity)} (it reaches {achieved:.3f}; "
            f"the least it can keep is {lowest:.3f}{uniform}); add granularities, e.g. --granularity heads,ffn"
        )
    return kept


def _spread(analysis, matrices, groups, fixed: dict[str, int], target: float) -> dict[str, int]:
    """The same share of units in every group but those `fixed`, then single units moved to come closest."""
    return _fill(analysis, matrices, _bundles(groups), _uniform(analysis, matrices, groups, target, fixed), target)


def _counts(groups, fraction: float) -> dict[str, int]:
    return {g.name: max(1, int(np.floor(fraction * g.units + 1e-9))) for g in groups}


def _uniform(analysis, matrices, groups, target: float, fixed: dict[str, int]) -> dict[str, int]:
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if parameter_count(analysis, matrices, {**fixed, **_counts(groups, middle)}) <= target:
            low = middle
        else:
            high = middle
    return {**fixed, **_counts(groups, low)}


def _bundles(groups) -> list[list]:
    """Groups that move together: the heads groups that resize a KV cache (a decoder's) form one bundle, so that every
    layer keeps the same number of KV heads, as ONNX Runtime's and optimum's cache layouts assume; every other group
    moves alone."""
    cached = [g for g in groups if g.kind == "heads" and g.cache and len({h.units for h in groups if h.cache}) == 1]
    return ([cached] if cached else []) + [[g] for g in groups if g not in cached]


def _fill(analysis, matrices, bundles, kept: dict[str, int], target: float) -> dict[str, int]:
    """Move single units (+1 or -1, in every group of a bundle at once) while that brings the total closer to the
    target; among equal moves, grow the least-kept group or shrink the most-kept one, so groups of one kind stay
    even."""
    kept = dict(kept)
    distance = abs(parameter_count(analysis, matrices, kept) - target)
    while True:
        moves = []
        for bundle in bundles:
            first = bundle[0]
            for step in (1, -1):
                count = kept[first.name] + step
                if 1 <= count <= first.units:
                    trial = {**kept, **{group.name: count for group in bundle}}
                    evenness = count / first.units if step > 0 else 1 - count / first.units
                    moves.append(
                        (abs(parameter_count(analysis, matrices, trial) - target), evenness, first.name, trial)
                    )
        best = min(moves, key=lambda move: move[:3]) if moves else None
        if best is None or best[0] >= distance:
            return kept
        distance, kept = best[0], best[3]


def reallocate(analysis: GraphAnalysis, counts: dict[str, int], losses: dict[str, np.ndarray]) -> dict[str, int]:
    """Global allocation: the same weight count as `counts`, spent where units lose least per weight.

    `losses[name]`: the ascending losses of a group's units as they would be removed, in a currency common to every
    group; removing a unit saves its share of the group's weights. Units are removed across the groups of `counts`
    that have losses, the least loss per weight saved first, from every unit kept down to one per group, until the
    weights left are no more than those of `counts`; the last removed that still fit are then given back."""
    matrices = encoder_matrices(analysis)
    target = parameter_count(analysis, matrices, counts)
    moving = {name: loss for name, loss in losses.items() if name in counts}
    kept = {**counts, **{name: analysis.group(name).units for name in moving}}
    total = parameter_count(analysis, matrices, kept)
    saved = {
        name: total - parameter_count(analysis, matrices, {**kept, name: kept[name] - 1})
        for name in moving
        if kept[name] > 1
    }
    removals = sorted((float(loss) / saved[name], name) for name in saved for loss in moving[name])
    done = []
    for _, name in removals:
        if total <= target:
            break
        kept[name] -= 1
        total -= saved[name]
        done.append(name)
    for name in reversed(done):  # the last removal may overshoot by a head: give back the units that still fit
        if total + saved[name] <= target:
            kept[name] += 1
            total += saved[name]
    return kept
