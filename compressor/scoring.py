"""Unit scores and masks: top-down mutual information, and the baselines a user compares with.

MI (Fan et al., EMNLP 2021), Gaussian estimate: for a unit x and the kept set Y of the layer above,
I(x; Y) = -1/2 log(1 - R²), R² from regressing x on Y; a head is a block of units scored by the log-determinant form
I(X; Y) = 1/2 [log det Σ_X - log det Σ_X|Y]. Layers are decided from the top signal down, each against what the
layer above kept; the hidden stream, one group for the whole encoder, sums its information about the kept units of
every layer that reads it and about the top signal.
"""
from __future__ import annotations

import numpy as np

from compressor.capture import CapturedStats
from graph_passes import ChannelGroup, GraphAnalysis

METHODS = ("mi", "magnitude", "wanda", "random")
RIDGE = 1e-3  # relative to the mean variance: keeps every solve well conditioned
MAX_R2 = 1 - 1e-9


def _ridge(cov: np.ndarray) -> np.ndarray:
    scale = max(float(np.mean(np.diag(cov))), 1e-12)
    return cov + RIDGE * scale * np.eye(len(cov))


def unit_mi(var_x: np.ndarray, cross: np.ndarray, cov_y: np.ndarray) -> np.ndarray:
    """Gaussian I(x_i; Y) for every row i of `cross` (Cov(x_i, Y)) at once."""
    if cross.shape[1] == 0:
        return np.zeros(len(var_x))
    solved = np.linalg.solve(_ridge(cov_y), cross.T)
    explained = np.einsum("yi,iy->i", solved, cross)
    r2 = np.clip(explained / np.maximum(var_x, 1e-12), 0.0, MAX_R2)
    return -0.5 * np.log1p(-r2)


def block_mi(cov_x: np.ndarray, cross: np.ndarray, cov_y: np.ndarray, width: int) -> np.ndarray:
    """Gaussian I(X_b; Y) for consecutive blocks of `width` units (heads)."""
    blocks = len(cov_x) // width
    if cross.shape[1] == 0:
        return np.zeros(blocks)
    solved = np.linalg.solve(_ridge(cov_y), cross.T)
    explained = cross @ solved
    scores = np.empty(blocks)
    for b in range(blocks):
        s = slice(b * width, (b + 1) * width)
        marginal = _ridge(cov_x[s, s])
        conditional = marginal - explained[s, s]
        _, logdet_marginal = np.linalg.slogdet(marginal)
        sign, logdet_conditional = np.linalg.slogdet(conditional)
        scores[b] = 0.5 * (logdet_marginal - logdet_conditional) if sign > 0 else np.inf
    return scores


def top_k(scores: np.ndarray, count: int) -> np.ndarray:
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:count]] = True
    return mask


def mi_masks(stats: CapturedStats, analysis: GraphAnalysis, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Top-down: the top layer against the top signal, each layer below against what the layer above kept."""
    masks: dict[str, np.ndarray] = {}
    kept_above: list[np.ndarray] = [np.array([], dtype=int)] * len(stats.plan.layers)
    for i in reversed(range(len(stats.plan.layers))):
        taps = stats.plan.layers[i]
        if i == len(stats.plan.layers) - 1:
            top = stats.top_units
            cov_x, cross, cov_y = top.covariance(), top.cross_covariance(), top.partner_covariance()
        else:
            keep = kept_above[i + 1]
            cov_x = stats.layers[i].covariance()
            cross = stats.layers[i].cross_covariance()[:, keep]
            cov_y = stats.layers[i + 1].covariance()[np.ix_(keep, keep)]
        head_width = taps.heads_size // analysis.group(taps.heads).units
        h = taps.heads_size
        head_scores = block_mi(cov_x[:h, :h], cross[:h], cov_y, head_width)
        ffn_scores = unit_mi(np.diag(cov_x)[h:], cross[h:], cov_y)
        masks[taps.heads] = top_k(head_scores, counts.get(taps.heads, len(head_scores)))
        masks[taps.ffn] = top_k(ffn_scores, counts.get(taps.ffn, len(ffn_scores)))
        head_dims = (np.flatnonzero(masks[taps.heads])[:, None] * head_width + np.arange(head_width)).reshape(-1)
        kept_above[i] = np.concatenate([head_dims, h + np.flatnonzero(masks[taps.ffn])])
    if "hidden" in counts:
        masks["hidden"] = top_k(_hidden_mi(stats, kept_above), counts["hidden"])
    return {name: mask for name, mask in masks.items() if name in counts}


def _hidden_mi(stats: CapturedStats, kept: list[np.ndarray]) -> np.ndarray:
    score = np.zeros(stats.hidden[0].dim)
    for moments, keep in zip(stats.hidden, kept):
        cov_y = stats.layers[stats.hidden.index(moments)].covariance()[np.ix_(keep, keep)]
        score += unit_mi(np.diag(moments.covariance()), moments.cross_covariance()[:, keep], cov_y)
    if stats.top_hidden is not None:
        top = stats.top_hidden
        score += unit_mi(np.diag(top.covariance()), top.cross_covariance(), top.partner_covariance())
    return score


def _unit_slices(analysis: GraphAnalysis, group: ChannelGroup, weight: str) -> tuple[np.ndarray, int]:
    """The weight as a (units, rest) matrix of the entries that belong to each unit of `group`."""
    linear = analysis.linear(weight)
    matrix = analysis.values[weight]
    axis = linear.in_axis if analysis.group_of_axis(weight, linear.in_axis) is group else linear.out_axis
    moved = np.moveaxis(matrix, axis, 0)
    return moved.reshape(group.units, -1), axis


def magnitude_scores(analysis: GraphAnalysis, group: ChannelGroup) -> np.ndarray:
    """Structured weight norm: the L2 norm of every weight entry attached to the unit."""
    total = np.zeros(group.units)
    for weight in group.readers + group.writers:
        slices, _ = _unit_slices(analysis, group, weight)
        total += np.square(slices).sum(axis=1)
    return np.sqrt(total)


def wanda_scores(analysis: GraphAnalysis, group: ChannelGroup, input_norms: dict[str, np.ndarray]) -> np.ndarray:
    """|W|·‖X‖ summed over the unit's entries in every weight that reads it (Sun et al., structured)."""
    total = np.zeros(group.units)
    for weight in group.readers:
        activation = analysis.linear(weight).activation
        if activation not in input_norms:
            continue
        matrix = np.abs(analysis.values[weight])
        linear = analysis.linear(weight)
        rows = np.moveaxis(matrix, linear.in_axis, 0) * input_norms[activation][:, None]
        total += rows.reshape(group.units, -1).sum(axis=1)
    return total


def input_norms(stats: CapturedStats) -> dict[str, np.ndarray]:
    """‖x‖ per input channel (root mean square over calibration tokens) of every tapped activation."""
    norms: dict[str, np.ndarray] = {}
    for taps, layer, hidden in zip(stats.plan.layers, stats.layers, stats.hidden):
        rms = np.sqrt(layer.second_moment_diag())
        norms[taps.heads_tensor] = rms[: taps.heads_size]
        norms[taps.ffn_tensor] = rms[taps.heads_size:]
        norms[taps.hidden_tensor] = np.sqrt(hidden.second_moment_diag())
    if stats.top_hidden is not None:
        norms[stats.plan.top_hidden] = np.sqrt(stats.top_hidden.second_moment_diag())
    return norms


def choose_masks(
    method: str, analysis: GraphAnalysis, counts: dict[str, int], stats: CapturedStats | None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Masks keeping `counts[name]` units of each named group, chosen by `method`."""
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
