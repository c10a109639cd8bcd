"""Unit scores and masks: top-down mutual information, and the baselines a user compares with.

MI (after Fan et al., EMNLP 2021), Gaussian estimates from streamed covariances. Layers are decided from the top
down, each against what the kept units of the layer above read from it; a head is scored as a block. The hidden
stream, one group for the whole encoder, is scored by I(X; Y) = 1/2 [log det Σ_X - log det Σ_X|Y] against the kept
units of every layer that reads it and against the top signal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from compressor import budget
from compressor.capture import CapturedStats, LayerTaps
from compressor.statistics import Moments
from graph_passes import ChannelGroup, GraphAnalysis, kept_along

METHODS = ("mi", "magnitude", "wanda", "random")
RIDGE = 1e-3  # relative to the mean variance: keeps every solve well conditioned
ROUNDS = 8  # elimination rounds per layer (4 measured worse at keep 0.4 on minilm-sst2)
ALLOCATIONS = ("global", "uniform")
SCHUR_ROWS = 512  # rows of a removal's update computed at a time (`_remove`)


def _ridge(cov: np.ndarray, in_place: bool = False) -> np.ndarray:
    """`cov` with RIDGE x its mean variance added to the diagonal: a copy, or `cov` itself changed `in_place`."""
    scale = max(float(np.mean(np.diag(cov))), 1e-12)
    result = cov if in_place else cov.copy()
    result[np.diag_indices_from(result)] += RIDGE * scale
    return result


def top_k(scores: np.ndarray, count: int) -> np.ndarray:
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:count]] = True
    return mask


def mi_masks(
    stats: CapturedStats, analysis: GraphAnalysis, counts: dict[str, int], allocation: str = "uniform"
) -> dict[str, np.ndarray]:
    """Top-down: the top layer against what it writes, each layer below against what the layer above kept reads.

    A layer's units U reach the layer above as T = U W R: W their output projection (attention output for the heads,
    FFN down for the neurons), R the projections through which the kept units above read the stream (their Q, K, V
    and FFN up columns; the identity at the top). Through a Gaussian channel Y = T + N, N ~ N(0, σ²I), removing block
    b loses I(U; Y) - I(U without b; Y) ≈ tr(Σ_b|rest · (W R)_b (W R)_bᵀ) / 2σ² at low signal-to-noise: the variance
    the layer above would read from b that the remaining units cannot explain. σ² is common to a layer, so it does
    not change the ranking. Heads and neurons are removed in a few rounds; unlike a score per unit, the conditional
    variance does not keep two units that carry the same information.

    Heads are conditioned on the layer's other heads only, neurons on its other neurons only: that is what recovery
    re-expresses a removed unit through (each output projection is refit from its own kept inputs), and the neurons
    are computed from the heads' output, so they cannot stand in for a head that is gone (conditioning heads on the
    neurons too measured 0.7 points lower dev accuracy at keep 0.396 on minilm-sst2, mean of three calibration draws).

    A group that capture does not tap as one layer's heads or FFN (heads tied across layers by a shared position
    bias, an FFN whose layer has no such heads) is ranked by weight magnitude.

    `allocation="global"`: the budget's counts are first moved between layers and kinds (`budget.reallocate`): a
    top-down pass at the given counts records every layer's loss curve, units go where they lose least per weight,
    and the masks are chosen again at the new counts (BENCHMARKS.md, encoder frontier, says what it kept). The top
    layer keeps its share: nothing above reads it through projections, so its losses are variance of the stream
    itself, smaller than what a layer above reads, and counted with the others they emptied it (1 head and 10
    neurons at keep 0.4 on minilm-sst2, 1.4 points below uniform).
    """
    if allocation == "global":
        counts = reallocated(stats, analysis, counts)
    masks = _top_down(stats, analysis, counts)
    for name in counts.keys() - masks.keys():  # not one layer's units (MPNet's heads share a position bias)
        masks[name] = top_k(magnitude_scores(analysis, analysis.group(name)), counts[name])
    return {name: mask for name, mask in masks.items() if name in counts}


def reallocated(stats: CapturedStats, analysis: GraphAnalysis, counts: dict[str, int]) -> dict[str, int]:
    """The counts of global allocation: the budget's `counts` moved between layers and kinds by the loss curves of a
    top-down pass at those counts (`budget.reallocate`)."""
    losses: dict[str, np.ndarray] = {}
    _top_down(stats, analysis, counts, losses)
    return {**counts, **budget.reallocate(analysis, counts, losses)}


def _top_down(
    stats: CapturedStats,
    analysis: GraphAnalysis,
    counts: dict[str, int],
    losses: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The layers' masks from the top down (and the hidden stream's); with `losses`, each layer's removal losses
    (`layer_curves`) are also recorded there, under the masks chosen above it; the top layer records none, and the
    hidden stream is not chosen (the pass after reallocation chooses it)."""
    masks: dict[str, np.ndarray] = {}
    layers = stats.plan.layers
    hidden_kept: list[np.ndarray] = [np.array([], dtype=int)] * len(layers)
    for i in reversed(range(len(layers))):
        taps = layers[i]
        written, reads = _read_through(analysis, taps, layers[i + 1] if i + 1 < len(layers) else None, masks)
        units = analysis.group(taps.heads).units, taps.ffn_size
        wanted = counts.get(taps.heads, units[0]), counts.get(taps.ffn, units[1])
        kinds = read_systems(stats.layers[i], written, reads, units)
        if losses is None or i == len(layers) - 1:  # the top layer is read by no layer: another currency
            masks[taps.heads], masks[taps.ffn] = layer_masks(kinds, wanted)
        else:
            for name, (mask, loss) in zip((taps.heads, taps.ffn), layer_curves(kinds, wanted)):
                masks[name] = mask
                if not analysis.group(name).cache:  # a decoder's KV heads keep one count in every layer
                    losses[name] = loss
        width = taps.heads_size // units[0]
        hidden_kept[i] = np.concatenate(
            [np.flatnonzero(np.repeat(masks[taps.heads], width)), taps.heads_size + np.flatnonzero(masks[taps.ffn])]
        )
    if "hidden" in counts and losses is None:  # the pass that records losses leaves the stream to the next one
        systems = [InformationLoss(*pair) for pair in _hidden_systems(stats, hidden_kept)]
        channels = stats.hidden[0].dim
        masks["hidden"] = _eliminate(systems, [np.array([c]) for c in range(channels)], counts["hidden"])
    return masks


Kind = tuple["ReadLoss", list[np.ndarray]]  # one kind of a layer's units: its system and its blocks of dimensions


def read_systems(moments: Moments, written: np.ndarray, reads: np.ndarray | None, units: tuple[int, int]) -> list[Kind]:
    """A layer's two kinds of units (heads' dimensions in units[0] equal blocks, then units[1] neurons), each with its
    `ReadLoss` system: their covariance (of `moments`, over the layer's units) and G = (W R)(W R)ᵀ, W their rows of
    `written`, R `reads` (`_read_through`). Only the two diagonal blocks are formed, each kind being eliminated
    against its own kind only."""
    kinds = _layer_kinds(moments.dim, units)
    grams = _read_grams([written[dims] for dims, _ in kinds], reads)
    return [
        (ReadLoss(_ridge(moments.restricted(dims).covariance()), gram), blocks)
        for (dims, blocks), gram in zip(kinds, grams)
    ]


def _read_grams(parts: list[np.ndarray], reads: np.ndarray | None) -> list[np.ndarray]:
    """(W R)(W R)ᵀ for each W of `parts`, taken through the narrower of R's columns and its rows: as W (R Rᵀ) Wᵀ
    where the kept units above read more columns than the stream has channels (TinyLlama's shape: about 6,900 over
    2,048, less than half the multiply-adds of forming W R); R is the identity when None."""
    if reads is None:
        return [part @ part.T for part in parts]
    if reads.shape[1] > reads.shape[0]:
        through = reads @ reads.T
        return [part @ through @ part.T for part in parts]
    return [(read := part @ reads) @ read.T for part in parts]


def layer_masks(kinds: list[Kind], wanted: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Kept heads and kept neurons of one layer (`read_systems`), each kind eliminated against its own kind only."""
    return tuple(_eliminate([system], blocks, target) for (system, blocks), target in zip(kinds, wanted))


def layer_curves(
    kinds: list[Kind], wanted: tuple[int, int]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Per kind (heads, then neurons) of one layer: the `wanted` units kept longest when the kind is eliminated down
    to one unit, and the losses of the units removed on the way, ascending. The losses are variance read by the
    layer above (`ReadLoss`), which reads a stream normalized by a LayerNorm in every layer: one currency for all
    layers and both kinds, so that global allocation can compare them. One elimination gives both."""
    found = []
    for (system, blocks), count in zip(kinds, wanted):
        _, removed, order = _removal([system], blocks, 1)
        found.append((top_k(order.astype(float), count), np.sort(removed[np.isfinite(removed)])))
    return tuple(found)


def _layer_kinds(size: int, units: tuple[int, int]) -> tuple[tuple[np.ndarray, list[np.ndarray]], ...]:
    """A layer's two kinds of units as (dimensions, blocks): the heads (units[0] equal blocks of dimensions), then
    the neurons (units[1], one dimension each)."""
    heads_size = size - units[1]
    width = heads_size // units[0]
    return (
        (np.arange(heads_size), [np.arange(b * width, (b + 1) * width) for b in range(units[0])]),
        (np.arange(heads_size, size), [np.array([j]) for j in range(units[1])]),
    )


def _read_through(
    analysis: GraphAnalysis, taps: LayerTaps, above: LayerTaps | None, masks: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """W and R: how each unit of the layer (rows: head dimensions, then neurons) writes the stream, and how the kept
    units above read it (their Q, K, V and FFN up columns; None at the top, where the stream itself is what counts)."""
    written = np.vstack([_as_rows(analysis, analysis.group(g).readers[0]) for g in (taps.heads, taps.ffn)])
    if above is None:
        return written, None
    reads = [
        _as_rows(analysis, weight)[:, kept_along(analysis, masks, weight, analysis.linear(weight).out_axis)]
        for group in (above.heads, above.ffn)
        for weight in analysis.group(group).writers
    ]
    return written, np.hstack(reads)


def _as_rows(analysis: GraphAnalysis, weight: str) -> np.ndarray:
    """A linear weight as an (inputs, outputs) matrix."""
    matrix = analysis.values[weight].astype(np.float64)
    return matrix.T if analysis.linear(weight).in_axis == 1 else matrix


@dataclass(frozen=True)
class InformationLoss:
    """Information about Y lost with each block: 1/2 [log det (Σ_U|Y)⁻¹_bb - log det (Σ_U)⁻¹_bb]."""

    marginal: np.ndarray
    conditional: np.ndarray

    def inverted(self) -> list[np.ndarray]:
        """The state that elimination starts from and carries through removals (`_remove`): the precisions."""
        return [np.linalg.inv(self.marginal), np.linalg.inv(self.conditional)]

    def losses(self, precisions: list[np.ndarray], widths: np.ndarray, dims: np.ndarray) -> np.ndarray:
        marginal, conditional = (_block_logdets(p, widths) for p in precisions)
        return 0.5 * (conditional - marginal)


@dataclass(frozen=True)
class ReadLoss:
    """Variance read above that the rest cannot explain: tr(((Σ_U)⁻¹_bb)⁻¹ G_bb), G = (W R)(W R)ᵀ."""

    covariance: np.ndarray
    gram: np.ndarray

    def inverted(self) -> list[np.ndarray]:
        return [np.linalg.inv(self.covariance)]

    def losses(self, precisions: list[np.ndarray], widths: np.ndarray, dims: np.ndarray) -> np.ndarray:
        result = np.empty(len(widths))
        for chosen, index in _diagonal_blocks(widths):
            blocks = precisions[0][index[:, :, None], index[:, None, :]]
            grams = self.gram[dims[index][:, :, None], dims[index][:, None, :]]
            result[chosen] = np.einsum("kij,kji->k", np.linalg.inv(blocks), grams)
        return result


@dataclass(frozen=True)
class RefitLoss:
    """Variance of a target y that the rest cannot explain once they are refit to it by least squares:
    tr(A_bᵀ ((Σ_U)⁻¹_bb)⁻¹ A_b), A = Σ_U⁻¹ C the refit's weights, C = E[U yᵀ] (optimal brain surgeon, for blocks).
    As `ReadLoss` with the readout W R replaced by the weights a refit of the rest would give the block: through a
    Gaussian channel y + N it is the information about y lost with the block, at low signal-to-noise."""

    covariance: np.ndarray
    cross: np.ndarray

    def inverted(self) -> list[np.ndarray]:
        """[Σ_U⁻¹ | A]: the refit's weights ride along as columns of the precision, so that each removal updates
        them as it updates the precision (`_remove`), instead of a product of the precision with every target column
        each round (on TinyLlama's shape: 8 rounds of up to 5,632 x 5,632 x 2,048 multiply-adds per FFN)."""
        precision = np.linalg.inv(self.covariance)
        return [np.hstack([precision, precision @ self.cross])]

    def losses(self, precisions: list[np.ndarray], widths: np.ndarray, dims: np.ndarray) -> np.ndarray:
        size = len(precisions[0])
        weights = precisions[0][:, size:]
        result = np.empty(len(widths))
        for chosen, index in _diagonal_blocks(widths):
            blocks = precisions[0][index[:, :, None], index[:, None, :]]
            coefficients = weights[index]
            result[chosen] = np.einsum("kio,kio->k", np.linalg.solve(blocks, coefficients), coefficients)
        return result


def refit_selection(covariance: np.ndarray, cross: np.ndarray, blocks: list[np.ndarray], count: int) -> np.ndarray:
    """Which `count` of the blocks of units to keep so that a least-squares refit of the kept ones to a target
    loses least of it (`RefitLoss`): `covariance` of the units (which receives the ridge in place: a copy of a
    4,096-neuron system is 134 MB), `cross` their products with the target."""
    return _eliminate([RefitLoss(_ridge(covariance, in_place=True), cross)], blocks, count)


def _eliminate(
    systems: list[InformationLoss | ReadLoss | RefitLoss], blocks: list[np.ndarray], target: int, rounds: int = ROUNDS
) -> np.ndarray:
    """Greedy backward elimination of blocks down to `target` of them, in `rounds` steps (`_removal` does it)."""
    return _removal(systems, blocks, target, rounds)[0]


def _removal(
    systems: list[InformationLoss | ReadLoss | RefitLoss], blocks: list[np.ndarray], target: int, rounds: int = ROUNDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy backward elimination of blocks down to `target` of them, in `rounds` steps: which blocks are left,
    each removed block's loss when it was removed (infinite for the blocks left), and the order of removal (0 for
    the first block removed, the number of blocks for those left).

    A block's loss is summed over the systems (the hidden stream informs every layer that reads it). The precision
    matrices are inverted once (`inverted`); removing dimensions d from a precision matrix P leaves the precision of
    the rest as the Schur complement P_rr - P_rd P_dd⁻¹ P_dr (`_remove`).
    """
    removed_loss = np.full(len(blocks), np.inf)
    order = np.full(len(blocks), len(blocks))
    alive = np.ones(len(blocks), dtype=bool)
    dims = np.concatenate(blocks)
    precisions = [system.inverted() for system in systems]
    widths = np.array([len(b) for b in blocks])
    for step in range(1, rounds + 1):
        ids = np.flatnonzero(alive)
        loss = sum(system.losses(p, widths[ids], dims) for system, p in zip(systems, precisions))
        surplus = len(ids) - round(len(blocks) - (len(blocks) - target) * step / rounds)
        if surplus > 0:
            dropped = np.argsort(loss, kind="stable")[:surplus]
            order[ids[dropped]] = len(blocks) - len(ids) + np.arange(surplus)
            alive[ids[dropped]] = False
            removed_loss[ids[dropped]] = loss[dropped]
        if step == rounds:  # the precisions of what is left are not read again
            break
        keep = np.isin(dims, np.concatenate([blocks[b] for b in np.flatnonzero(alive)]))
        precisions = [[_remove(p, keep) for p in pair] for pair in precisions]
        dims = dims[keep]
    return alive, removed_loss, order


def _conditioned(cov_x: np.ndarray, cross: np.ndarray, cov_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_X, Σ_X|Y), both ridge-regularised."""
    marginal = _ridge(cov_x)
    return marginal, marginal - cross @ np.linalg.solve(_ridge(cov_y), cross.T)


def _diagonal_blocks(widths: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For blocks laid end to end with the given widths, per width: which blocks have it, and their indices."""
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    for width in np.unique(widths):
        chosen = widths == width
        yield chosen, starts[chosen][:, None] + np.arange(width)


def _block_logdets(precision: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """log det of each diagonal block of `precision`, the blocks laid end to end with the given widths."""
    result = np.empty(len(widths))
    for chosen, index in _diagonal_blocks(widths):
        sign, value = np.linalg.slogdet(precision[index[:, :, None], index[:, None, :]])
        result[chosen] = np.where(sign > 0, value, -np.inf)
    return result


def _remove(precision: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The precision matrix of the kept variables, from the precision matrix P of all of them, with any columns
    beyond P's carried along: a column a of A = P C (a least-squares solution over all the variables) becomes
    a_r - P_rd P_dd⁻¹ a_d, the solution over the kept ones alone (`RefitLoss`)."""
    if keep.all():
        return precision
    drop = ~keep
    columns = np.concatenate([keep, np.ones(precision.shape[1] - len(keep), dtype=bool)])
    kept_rows = precision[np.ix_(keep, drop)]
    moved = np.linalg.solve(precision[np.ix_(drop, drop)], precision[np.ix_(drop, columns)])
    result = precision[np.ix_(keep, columns)]
    for start in range(0, len(result), SCHUR_ROWS):  # the product a few rows at a time, not a third full matrix
        result[start : start + SCHUR_ROWS] -= kept_rows[start : start + SCHUR_ROWS] @ moved
    return result


def _hidden_systems(stats: CapturedStats, kept: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The hidden stream where each layer reads it, against that layer's kept units; and against the top signal."""
    systems = []
    for moments, layer, keep in zip(stats.hidden, stats.layers, kept):
        cov_y = layer.covariance()[np.ix_(keep, keep)]
        systems.append(_conditioned(moments.covariance(), moments.cross_covariance()[:, keep], cov_y))
    if stats.top_hidden is not None:
        top = stats.top_hidden
        systems.append(_conditioned(top.covariance(), top.cross_covariance(), top.partner_covariance()))
    return systems


def _unit_slices(analysis: GraphAnalysis, group: ChannelGroup, weight: str) -> tuple[np.ndarray, int]:
    """The weight as a (units, rest) matrix of the entries that belong to each unit of `group`."""
    linear = analysis.linear(weight)
    matrix = analysis.values[weight]
    axis = linear.in_axis if analysis.group_of_axis(weight, linear.in_axis) is group else linear.out_axis
    order = group.unit_major(analysis.dims.find(analysis.dims.axes[(weight, axis)]))  # packed Q, K, V: per head
    moved = np.moveaxis(np.take(matrix, order, axis=axis), axis, 0)
    return moved.reshape(group.units, -1), axis


def magnitude_scores(analysis: GraphAnalysis, group: ChannelGroup) -> np.ndarray:
    """Structured weight norm: the L2 norm of every weight entry attached to the unit."""
    total = np.zeros(group.units)
    for weight in group.readers + group.writers:
        slices, _ = _unit_slices(analysis, group, weight)
        total += np.square(slices).sum(axis=1)
    return np.sqrt(total)


def wanda_scores(analysis: GraphAnalysis, group: ChannelGroup, input_norms: dict[str, np.ndarray]) -> np.ndarray:
    """|W|·‖X‖ summed over the unit's entries in every weight that reads it (Sun et al., structured); ‖X‖ over every
    application of a shared weight. Capture taps the input of every reader of a prunable group, so a reader whose
    input norm is missing is an error."""
    total = np.zeros(group.units)
    for weight in group.readers:
        uses = analysis.uses(weight)
        norm = np.sqrt(np.mean([np.square(input_norms[use.activation]) for use in uses], axis=0))
        rows = np.moveaxis(np.abs(analysis.values[weight]), uses[0].in_axis, 0) * norm[:, None]
        total += rows.reshape(group.units, -1).sum(axis=1)
    return total


def input_norms(stats: CapturedStats) -> dict[str, np.ndarray]:
    """‖x‖ per input channel (root mean square over calibration tokens) of every tapped activation."""
    norms: dict[str, np.ndarray] = {}
    for taps, layer, hidden in zip(stats.plan.layers, stats.layers, stats.hidden):
        rms = np.sqrt(layer.second_moment_diag())
        for heads, ffn, stream in taps.applications:  # a shared layer's moments pool all its applications
            norms[heads] = rms[: taps.heads_size]
            norms[ffn] = rms[taps.heads_size :]
            norms[stream] = np.sqrt(hidden.second_moment_diag())
    if stats.top_hidden is not None:
        norms[stats.plan.top_hidden] = np.sqrt(stats.top_hidden.second_moment_diag())
    norms.update({name: np.sqrt(sums.second_moment_diag()) for name, sums in stats.readers.items()})
    return norms


def choose_masks(
    method: str,
    analysis: GraphAnalysis,
    counts: dict[str, int],
    stats: CapturedStats | None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Masks keeping `counts[name]` units of each named group, chosen by `method` (for global allocation, the counts
    `reallocated` gives)."""
    if method == "mi":
        return mi_masks(stats, analysis, counts)
    rng = np.random.default_rng(seed)
    norms = input_norms(stats) if method == "wanda" else {}
    masks = {}
    for name, count in counts.items():
        group = analysis.group(name)
        if method == "magnitude":
            scores = magnitude_scores(analysis, group)
        elif method == "wanda":
            scores = wanda_scores(analysis, group, norms)
        else:
            scores = rng.random(group.units)
        masks[name] = top_k(scores, count)
    return masks
