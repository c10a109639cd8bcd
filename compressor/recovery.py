"""Recovery without retraining: refit the projections that read pruned units, by ridge least squares.

Every projection that reads a layer's heads (the attention output projection) or FFN neurons (the down projection)
is refit so that on calibration tokens it reproduces what the original model's projection produced from the
original activations:

    min over (W', b') of  E ‖ x W' + b' - (z W + b)[kept outputs] ‖²  +  λ ‖W'‖²

z: all units as the original model computes them; x: the kept units, either as the original computes them
("original" inputs: a pass of the original per group of layers whose moments fit a budget; the
removed units' contribution is re-expressed through the kept ones that predict it) or as the pruned model computes them
with every layer below already refit (layer by layer, each model cut down to one layer and fed with that layer's input
as it computed it; on minilm-sst2 this measured lower dev accuracy at keep 0.4 and 0.8, see BENCHMARKS.md). With
"stream" inputs (the pipeline's default, but for an encoder whose hidden stream is pruned and for shared weights) the
target is where the original stream would be after the projection's residual add, so that each refit also makes up
for the layers below (error compensation; on stories260k it measured lower perplexity than either, see BENCHMARKS.md's
decoder notes). Stream refits also refit the projections that read the stream (each layer's Q, K, V and FFN up), from
the stream the pruned model computes to what the original computed from its own, and with `reselect` they choose which
of a layer's heads and neurons to keep as they reach it: among all of them as the pruned layers below compute them,
those whose refit to the original stream loses least (`scoring.RefitLoss`, as many as the masks given keep). On
stories260k at keep 0.8 / 0.6 / 0.4 that took perplexity from 6.89 / 15.96 / 40.56 to 6.65 / 15.08 / 35.19
(reselection alone 6.76 / 15.73 / 37.47), and stream refits on minilm-sst2 at keep 0.3 from 0.8567 to 0.8658 dev
accuracy (draw 0).
Only second moments are kept. λ is chosen on held-out calibration tokens; a refit that does not lower its held-out error
is not applied; an applied one is solved again with its λ on all calibration tokens (more data for the weights; at keep
0.6 on minilm-sst2 this measured +0.5 points of dev accuracy). Refits that do not bring the model's output closer to the
original's on the held-out tokens are all dropped; the pipeline's own fidelity samples, never seen here, give the
independent check.

With the hidden stream pruned, every projection that reads it (each layer's Q, K, V and FFN up, a pooler) reads fewer
channels, normalized over fewer: those are refit the same way, to the original's outputs at their kept columns (on
minilm-sst2 at keep 0.4 this took `heads,ffn,hidden` from 0.7752 to 0.8475 dev accuracy, draw 0; a per-channel refit
of the stream's LayerNorm scales and biases on top measured 0.844, and was left out: BENCHMARKS.md, encoder frontier).

A weight that several layers share (ALBERT) is refit once, on the rows of every application pooled: one W' that
serves all of them, its bias written to each application's copy. With pruned inputs each layer's refit would change
the inputs of the shared weight's other applications, so there a shared projection is left as sliced, and the report
says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import chain, groupby
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compressor.batch_store import Spill, Stored
from compressor.calibration import Calibration
from compressor.capture import batch_length, plan_capture, token_mask, token_rows
from compressor.fidelity import ROWS, Reference, output_width, outputs_of, run_size, session
from compressor.scoring import refit_selection
from compressor.statistics import Gathered, Moments
from graph_passes import (
    ChannelGroup,
    GraphAnalysis,
    apply_masks,
    initializer_behind,
    kept_along,
    layer_cuts,
    linear_biases,
    normalize,
    replace_initializers,
    share_equal_initializers,
    truncated,
)
from graph_passes.external_data import DataFile, tensor_array

REFIT_INPUTS = ("original", "pruned", "stream")
RIDGES = (
    1e-5,
    3e-5,
    1e-4,
    3e-4,
    1e-3,
    3e-3,
    1e-2,
    3e-2,
    0.1,
    0.3,
    1.0,
)  # relative to the mean variance of the kept units
CHECK_EVERY = 4  # every 4th calibration sample is held out to check each refit
MOMENT_BUDGET = 2**28  # bytes of refit moments that one pass of the original may gather (256 MiB)
SHARED_PRUNED = "shared by several layers: refitting it on pruned inputs would change its other applications' inputs"
COMPUTED_WEIGHT = (
    "computed from another weight (a tied lm_head reads the embedding through a Transpose): no tensor of its own to "
    "write a refit to, and refitting the embedding would change the tokens' embeddings too"
)


@dataclass(frozen=True)
class Projection:
    """A weight that reads a pruned group: what it computed in the original model, and what is left of it."""

    layer: int | None  # None: a reader of the stream past the last layer (a pooler)
    kind: str
    weight: str
    activations: tuple[str, ...]  # what the weight reads at each application: several when layers share it
    transposed: bool  # stored as (outputs, inputs): Gemm with transB
    rows: np.ndarray  # kept input indices
    bias: str | None  # the original bias added to its outputs (of its first application)
    columns: np.ndarray  # kept output indices
    values: Mapping[str, np.ndarray] = field(repr=False, compare=False)  # the original's weights (`analysis.values`)
    skip: str | None = None  # why it is left as sliced

    @property
    def target(self) -> np.ndarray:
        """The original [W; b] as (all inputs + 1, kept outputs), float32: y = [z, 1] @ target. Read from the
        original's weights each time rather than held: recovery of a large model would otherwise hold a copy of every
        projection's weights (3.9 GB of TinyLlama's 4.1) while it refits the first layer."""
        matrix = self.values[self.weight]
        matrix = (matrix.T if self.transposed else matrix)[:, self.columns]
        bias = np.zeros(len(self.columns)) if self.bias is None else self.values[self.bias][self.columns]
        return np.vstack([matrix, bias], dtype=np.float32)

    @property
    def inputs(self) -> int:
        """All of the original projection's inputs, kept or not."""
        return self.values[self.weight].shape[1 if self.transposed else 0]

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    def outputs(self, z: np.ndarray) -> np.ndarray:
        """What the original projection made of the original activations z, at the kept outputs."""
        weights = self.target.astype(z.dtype)
        return z @ weights[:-1] + weights[-1]

    def sliced(self) -> np.ndarray:
        """The pruned model's weights before any refit, as the (kept inputs [+ 1], kept outputs) solution."""
        return self.target[np.append(self.rows, len(self.target) - 1)][: self.width]

    @property
    def width(self) -> int:
        return len(self.rows) + self.has_bias


@dataclass(frozen=True)
class Refit:
    layer: int | None
    kind: str
    weight: str
    error_before: float  # held-out squared error relative to the original output's energy
    error_after: float
    ridge: float
    applied: bool
    skipped: str | None = None  # why no refit was tried


def projections(analysis: GraphAnalysis, masks: dict[str, np.ndarray], inputs: str = "original") -> list[Projection]:
    """The projections to refit, bottom layer first, attention before FFN: those that read pruned heads or neurons,
    and those that read the stream (each layer's Q, K, V and FFN up, then the stream's other readers: a pooler, a
    classifier) when the hidden stream is pruned, or when `inputs` is "stream": then each of them reads the stream
    as the pruned model computes it, and is refit to what the original computed from the original's."""
    stream = [g for g in analysis.by_kind("hidden") if g.name in masks and not masks[g.name].all()]
    every_reader = inputs == "stream"
    found = []
    for taps in plan_capture(analysis).layers:
        for kind, group in (("heads", taps.heads), ("ffn", taps.ffn)):
            writers = [
                w
                for w in analysis.group(group).writers
                if every_reader and _matmul(analysis, w) or _reads(analysis, w, stream)
            ]
            found += [_projection(analysis, masks, w, taps.layer, "stream") for w in writers]
            found += [_projection(analysis, masks, w, taps.layer, kind) for w in analysis.group(group).readers]
    seen = {p.weight for p in found}
    others = [w for g in stream for w in g.readers if w not in seen and _reads(analysis, w, stream)]
    return found + [_projection(analysis, masks, w, None, "stream") for w in dict.fromkeys(others)]


def _matmul(analysis: GraphAnalysis, weight: str) -> bool:
    """Whether the weight is applied by a MatMul or Gemm (not inside a fused attention, whose Q, K, V are not
    tensors of the graph)."""
    return analysis.model.graph.node[analysis.linear(weight).node_index].op_type in ("MatMul", "Gemm")


def _reads(analysis: GraphAnalysis, weight: str, groups: list[ChannelGroup]) -> bool:
    return analysis.group_of_axis(weight, analysis.linear(weight).in_axis) in groups


def _projection(
    analysis: GraphAnalysis, masks: dict[str, np.ndarray], weight: str, layer: int | None, kind: str
) -> Projection:
    linear = analysis.linear(weight)
    names = linear_biases(analysis.model, weight)
    biases = [None if b is None else analysis.values[b] for b in names]
    return Projection(
        layer=layer,
        kind=kind,
        weight=weight,
        activations=tuple(use.activation for use in analysis.uses(weight)),
        transposed=linear.in_axis == 1,
        rows=kept_along(analysis, masks, weight, linear.in_axis),
        bias=names[0],
        columns=kept_along(analysis, masks, weight, linear.out_axis),
        values=analysis.values,
        skip=COMPUTED_WEIGHT if initializer_behind(analysis.model, weight) is None else _unequal_biases(biases),
    )


def activation_names(analysis: GraphAnalysis) -> list[str]:
    """What every projection that can read a pruned group reads, at each application (exposed on the original's
    session for a refit on the original's activations): the heads' and neurons' readers, and the stream's."""
    weights = [
        weight
        for taps in plan_capture(analysis).layers
        for group in (taps.heads, taps.ffn)
        for weight in analysis.group(group).readers
    ] + [weight for group in analysis.by_kind("hidden") for weight in group.readers]
    return list(dict.fromkeys(use.activation for weight in weights for use in analysis.uses(weight)))


def _unequal_biases(biases: list[np.ndarray | None]) -> str | None:
    """Why one refit cannot serve every application of a shared weight: they add different biases."""
    first = biases[0]
    same = all((b is None) == (first is None) and (b is None or np.array_equal(b, first)) for b in biases[1:])
    return None if same else f"its {len(biases)} applications add different biases"


@dataclass
class Recovery:
    """The model to ship (refit, or the sliced one when refitting made the outputs worse) and what was done."""

    model: onnx.ModelProto
    refits: list[Refit]
    output_error: dict[str, float]  # held-out mean squared error of the model's output: "sliced" and "refit"
    masks: dict[str, np.ndarray]  # the units the model keeps (reselection may change the masks it was given)
    reselected: list[str]  # the groups whose units were chosen again
    sliced: onnx.ModelProto  # the model the masks make without refits, compared with

    @property
    def kept(self) -> bool:
        return self.output_error["refit"] < self.output_error["sliced"]

    def summary(self) -> dict:
        rows = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(r).items()} for r in self.refits]
        error = {k: float(f"{v:.6g}") for k, v in self.output_error.items()}
        return {"kept": self.kept, "output_error": error, "reselected": self.reselected, "projections": rows}


@dataclass(frozen=True)
class Batch:
    feeds: dict[str, np.ndarray]
    tokens: np.ndarray | None  # unpadded positions; None: every position
    held_out: bool


def recover(
    analysis: GraphAnalysis,
    pruned: onnx.ModelProto | None,
    masks: dict[str, np.ndarray],
    calibration: Calibration,
    indices: Sequence[int],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
    inputs: str = "original",
    original: ort.InferenceSession | None = None,
    reselect: bool = False,
    data: DataFile | None = None,
    reference: Reference | None = None,
) -> Recovery:
    """Refit, in graph order, every projection that reads pruned units.

    `inputs`: "original" fits each projection on the original model's activations (a pass per group of layers);
    "pruned" fits it on what the pruned model computes once every layer below is refit (a pass per projection,
    each covering one layer); "stream" also, with the original stream as target (`_compensated_moments`), and refits
    the projections that read the stream too. Each refit must lower its projection's held-out error; the whole must
    lower the held-out error of the model's output, or the sliced model is returned unchanged. `original`: a session
    of `analysis.model` exposing `activation_names` (the pipeline's, shared by every stage), else one is made: with
    "pruned" and "stream" inputs, which run the models a layer at a time, only for the output error once the refits
    are done (held through them, it would be the weights once more in memory). `data`: a file that receives the
    refit weights whose originals lie in files (the others are held in the returned model). `reference`: the
    original's output on the held-out samples (`output_reference`), else computed here once the refits are done.

    `reselect` (with "stream" inputs): each layer's heads and neurons are chosen again as the layer is reached, among
    all of its units as the pruned model below computes them, keeping as many as `masks` does: those whose refit to
    the original stream loses least (`scoring.refit_selection`). The masks of the returned model are in `masks` of
    the result. `pruned`: the model `masks` make, without refits; None where reselection chooses the units of every
    pruned group (then only the masks' counts are read): the model its chosen units make without refits is then the
    one compared with, and returned when the refits make the output worse.
    """
    if original is None and inputs == "original":
        original = session(analysis.model, activation_names(analysis))
    batches = _batches(calibration, indices, batch_size)
    chosen = reselectable(analysis, masks) if reselect and inputs == "stream" else []
    working = {**masks, **{name: np.ones_like(masks[name]) for name in chosen}}
    model = normalize(apply_masks(analysis, working) if chosen else pruned)
    found = projections(analysis, working, inputs)
    if inputs != "original":
        found = [p if len(p.activations) == 1 else replace(p, skip=p.skip or SHARED_PRUNED) for p in found]
    if inputs == "original":
        moments = _original_moments(original, found, batches)
    else:
        layered = [p for p in found if p.layer is not None]
        spill = Spill(data.path.parent if data is not None else None)  # the workspace, when there is one
        moments = chain(
            (_sequential_moments if inputs == "pruned" else _compensated_moments)(
                analysis, model, layered, batches, spill
            ),
            (_whole_model_moments(analysis.model, model, p, batches) for p in found if p.layer is None),
        )
    final, refits, written = dict(masks), [], []
    decompositions = LastDecomposition()
    for projection in found:
        fit, check = next(moments)  # its moments are released once refit
        group = analysis.group_of_axis(projection.weight, analysis.linear(projection.weight).in_axis)
        if group is not None and group.name in chosen:
            final[group.name], refit, weights = _reselect(analysis, group, projection, fit, check, masks)
        else:
            refit, weights = _refit(projection, fit, check, decompositions)
        if refit.applied or group is not None and group.name in chosen:
            _write(model, projection, weights, data)
            written.append(projection)
        refits.append(refit)
        if progress:
            progress(1)
    rechosen = pruned is None  # every pruned group chosen here: the slice compared with is of the units chosen
    if chosen:
        sliced = apply_masks(analysis, final, data=data)
        model = _sliced_refits(analysis, final, sliced, model, written, data)
        if rechosen:
            pruned, masks = sliced, final
        del sliced  # unless compared with, released once the refit model is its copy
    share_equal_initializers(model)
    if reference is None:
        reference = output_reference(original or session(analysis.model), calibration, indices, batch_size)
    del original  # the models compared below run alone
    error = {name: _output_error(reference, m) for name, m in (("sliced", pruned), ("refit", model))}
    recovery = Recovery(model, refits, error, final, chosen, pruned)
    return recovery if recovery.kept else Recovery(pruned, refits, error, masks, chosen if rechosen else [], pruned)


def reselectable(analysis: GraphAnalysis, masks: dict[str, np.ndarray]) -> list[str]:
    """The pruned heads and FFN groups whose units `recover(reselect=True)` can choose again: those read by one
    projection applied once (a weight shared by several layers, or a group read by several projections, keeps the
    masks it was given)."""
    return [
        name
        for name, mask in masks.items()
        if analysis.group(name).kind in ("heads", "ffn")
        and not mask.all()
        and len(readers := analysis.group(name).readers) == 1
        and len(analysis.uses(readers[0])) == 1
    ]


def _reselect(
    analysis: GraphAnalysis,
    group: ChannelGroup,
    projection: Projection,
    fit: Moments,
    check: Moments,
    masks: dict[str, np.ndarray],
) -> tuple[np.ndarray, Refit, np.ndarray]:
    """The group's units to keep, chosen on the moments of all of them (`projection` reads them all), the refit on
    the kept ones, and its weights as all of `projection`'s inputs with zeros where a unit is removed. `fit` and
    `check` are left restricted to the kept units."""
    dim = analysis.dims.find(analysis.dims.axes[(projection.weight, analysis.linear(projection.weight).in_axis)])
    blocks = list(np.searchsorted(projection.rows, group.unit_major(dim)).reshape(group.units, -1))
    kept = _selection(fit, projection.has_bias, blocks, int(masks[group.name].sum()))
    rows = np.sort(np.concatenate([blocks[u] for u in np.flatnonzero(kept)]))
    for moments in (fit, check):  # in place: the products of every unit are released before the refit
        moments.restrict(rows)
    refit, weights = _refit(replace(projection, rows=projection.rows[rows]), fit, check)
    scattered = np.zeros((projection.width, weights.shape[1]), weights.dtype)
    scattered[rows] = weights[: len(rows)]
    scattered[len(projection.rows) :] = weights[len(rows) :]
    return kept, refit, scattered


def _selection(fit: Moments, has_bias: bool, blocks: list[np.ndarray], count: int) -> np.ndarray:
    """`refit_selection` on the fit moments: its system is released on return, before the refit of the kept units
    (on TinyLlama's FFN, 346 MB that the refit does not need)."""
    n = max(fit.count, 1)
    covariance, cross = (fit.covariance(), fit.cross_covariance()) if has_bias else (fit.gram / n, fit.cross / n)
    return refit_selection(covariance, cross, blocks, count)


def _sliced_refits(
    analysis: GraphAnalysis,
    masks: dict[str, np.ndarray],
    sliced: onnx.ModelProto,
    work: onnx.ModelProto,
    written: list[Projection],
    data: DataFile | None,
) -> onnx.ModelProto:
    """`sliced`, the model `masks` make of the original, normalised (a copy: `sliced` is left as it is), with the
    weights that recovery wrote into `work` (the model in which the chosen groups kept every unit) cut to the units
    kept."""
    model = normalize(sliced)
    values = {t.name: t for t in work.graph.initializer}
    for projection in written:
        final = _projection(analysis, masks, projection.weight, projection.layer, projection.kind)
        matrix = tensor_array(values[projection.weight])
        rows = [matrix.T if projection.transposed else matrix]
        bias = linear_biases(work, projection.weight)[0]
        rows += [tensor_array(values[bias])[None, :]] if projection.has_bias and bias else []
        weights = np.vstack(rows)
        kept_rows = np.append(
            np.searchsorted(projection.rows, final.rows), np.arange(len(projection.rows), len(weights))
        )
        _write(model, final, weights[kept_rows][:, np.searchsorted(projection.columns, final.columns)], data)
    return model


def _original_moments(
    original: ort.InferenceSession, found: list[Projection], batches: list[Batch]
) -> Iterator[tuple[Moments, Moments]]:
    """For every projection, x = the original's own activations at the kept inputs, y = its original outputs.

    Lazy, a few layers at a time: one pass of the original gathers the moments of as many consecutive layers as fit
    `MOMENT_BUDGET` (`_passes`: all six of minilm-sst2 at keep 0.4, 64 MB), each handed out once and dropped here.
    Memory holds at most the budget's float64 moments (or one layer's, when that is larger) however many layers and
    samples there are, and per batch the activations that those layers' projections read (capture's run holds every
    layer's). A pass of the original costs about the same whatever it exposes: on minilm-sst2, six passes became one.
    """
    for passed in _passes(found, MOMENT_BUDGET):
        moments = _layer_moments(original, passed, batches)
        while moments:
            yield moments.pop(0)


def _passes(found: list[Projection], budget: int) -> Iterator[list[Projection]]:
    """The projections of consecutive layers, grouped so that each group's moments take at most `budget` bytes (a
    layer whose own moments are larger makes a group alone)."""
    group: list[Projection] = []
    for _, layer in groupby(found, key=lambda projection: projection.layer):
        mine = list(layer)
        if group and sum(map(_moment_bytes, group + mine)) > budget:
            yield group
            group = []
        group += mine
    if group:
        yield group


def _moment_bytes(projection: Projection) -> int:
    """The float64 products of a projection's fit and held-out moments: x xᵀ and x yᵀ, twice."""
    inputs = len(projection.rows)
    return 2 * 8 * inputs * (inputs + len(projection.columns))


def _layer_moments(
    original: ort.InferenceSession, mine: list[Projection], batches: list[Batch]
) -> list[tuple[Moments, Moments]]:
    """Fit and held-out moments of the projections `mine` (of one or more layers), from one pass of the original."""
    moments = [tuple(Gathered(Moments(len(p.rows), len(p.columns))) for _ in range(2)) for p in mine]
    names = list(dict.fromkeys(name for p in mine for name in p.activations))
    for batch in batches:
        values = dict(zip(names, original.run(names, batch.feeds)))
        for projection, (fit, check) in zip(mine, moments):
            for activation in projection.activations:
                z = token_rows(values[activation], batch.tokens)
                (check if batch.held_out else fit).add(z[:, projection.rows], projection.outputs(z))
    return [(fit.result(), check.result()) for fit, check in moments]


def _sequential_moments(
    analysis: GraphAnalysis, model: onnx.ModelProto, found: list[Projection], batches: list[Batch], spill: Spill
) -> Iterator[tuple[Moments, Moments]]:
    """For every projection in graph order, x = what `model` computes at the kept inputs, y = the original outputs.

    Lazy: the caller writes each refit into `model` before asking for the next. Layer by layer, each model's input
    to the layer is kept per batch (in `spill`'s lists), so every run covers one layer only.
    """
    layers = plan_capture(analysis).layers
    original_state = pruned_state = None
    for position, taps in enumerate(layers):
        cut = {} if position == 0 else {taps.hidden_tensor: analysis.values[taps.hidden_tensor].dtype}
        after = [layers[position + 1].hidden_tensor] if position + 1 < len(layers) else []
        mine = [p for p in found if p.layer == taps.layer]
        targets, original_next = _targets(analysis.model, mine, after, cut, batches, original_state, spill)
        for projection, target in zip(mine, targets):
            activations = _layer_outputs(model, [projection.activations[0]], cut, batches, pruned_state)
            yield _moments(projection, batches, (a[0] for a in activations), target)
        if after:
            original_state = original_next
            next_pruned = spill.stored()
            for outputs in _layer_outputs(model, after, cut, batches, pruned_state):
                next_pruned.append(outputs[0])
            pruned_state = next_pruned


def _compensated_moments(
    analysis: GraphAnalysis, model: onnx.ModelProto, found: list[Projection], batches: list[Batch], spill: Spill
) -> Iterator[tuple[Moments, Moments]]:
    """For every projection in graph order, x = what `model` computes at the kept inputs, y = the original
    projection's output plus what the pruned model's stream lacks where that output is added (the original stream
    there minus the pruned one). The refit then also makes up for the error of every layer below: the stream after
    it comes as close to the original's as the kept units allow (error compensation).

    Lazy: the caller writes each refit into `model` before asking for the next. The original runs one layer at a
    time, fed with what the layers below computed (`graph_passes.layer_cuts`), which is kept per batch. The pruned
    model is cut finer, at the inputs of each run of projections that read the same tensors (Q, K and V read one; a
    refit of one of them cannot change what the others read): once a run is refit, one pass computes what the next
    run reads and what the rest of the graph needs from below it, so that every part of the pruned model runs once.
    Running both models from the graph inputs for every projection cost a pass of all the layers below each time
    (quadratic in depth); running the pruned model from the layer's input for each run computed its attention four
    times (minilm-sst2: 1.1 s more of compress's 17.6). The original's side is kept per batch as the tensors the
    layer's projections read (once for Q, K and V), or as a projection's output where that is narrower (FFN down).
    What is kept per batch is held in `spill`'s lists (in files beyond its budget).
    """
    layers = plan_capture(analysis).layers
    mine = [[p for p in found if p.layer == taps.layer] for taps in layers]
    streams = {p.weight: residual_stream(analysis.model, analysis.linear(p.weight).node_index) for p in found}
    read = [[name for p in projections for name in _read(p, streams)] for projections in mine]
    original_cuts = layer_cuts(analysis.model, [taps.hidden_tensor for taps in layers], read)
    runs = [_same_reads(projections, streams) for projections in mine]
    run_reads = [_read(run[0], streams) for layer in runs for run in layer]
    pruned_cuts = iter(layer_cuts(model, [names[0] for names in run_reads], run_reads)[1:] + [None])
    original_state = pruned_state = None
    for position, projections in enumerate(mine):
        following = original_cuts[position + 1] if position + 1 < len(layers) else []
        names = list(dict.fromkeys(read[position] + following))
        kept: dict[str, Stored] = {}  # per projection output, or per tensor read: a list over batches
        next_state = spill.stored()
        for batch, values in zip(batches, _runs(analysis.model, names, batches, original_state)):
            rows = {name: token_rows(values[name], batch.tokens) for name in read[position]}
            for projection in projections:
                activation, *stream = _read(projection, streams)
                if _narrower_output(projection):
                    _stored(kept, projection.weight, spill).append(projection.outputs(rows[activation]))
                for name in ([] if _narrower_output(projection) else [activation]) + stream:
                    if len(_stored(kept, name, spill)) == len(next_state):  # once per batch
                        kept[name].append(rows[name])
            next_state.append({name: values[name] for name in following})
        original_state = next_state
        for run in runs[position]:
            names = _read(run[0], streams)
            values = _runs(model, names, batches, pruned_state)  # read from the state but for the first run
            if len(names) == 1 and not any(map(_narrower_output, run)):  # readers of the stream: y = z W + b
                yield from _mapped_moments(run, values, batches, kept[names[0]])
            else:
                yield from _run_moments(run, names, zip(batches, values), kept)
            following = next(pruned_cuts)  # the refits of the run are written by now
            if following is not None:
                pruned_state = _advanced(model, following, batches, pruned_state, spill)


def _run_moments(
    run: list[Projection],
    names: list[str],
    values: Iterator[tuple[Batch, dict[str, np.ndarray]]],
    kept: dict[str, Stored],
) -> Iterator[tuple[Moments, Moments]]:
    """The moments of projections that read the same tensors `names` of the pruned model (their input, and the
    stream their output is added to), against the original's output plus what the pruned stream lacks."""
    moments = [tuple(Gathered(Moments(len(p.rows), len(p.columns))) for _ in range(2)) for p in run]
    for index, (batch, found) in enumerate(values):
        activation, *stream = (token_rows(found[n], batch.tokens) for n in names)
        for projection, (fit, check) in zip(run, moments):
            target = _original_target(projection, kept, names, index)
            (check if batch.held_out else fit).add(activation, target - stream[0] if stream else target)
    yield from ((fit.result(), check.result()) for fit, check in moments)


def _advanced(
    model: onnx.ModelProto, cut: list[str], batches: list[Batch], state: Stored | None, spill: Spill
) -> Stored:
    """The values of the tensors `cut`, per batch, computed from `state` (from the graph inputs when None)."""
    following = spill.stored()
    for values in _runs(model, cut, batches, state):
        following.append({name: values[name] for name in cut})
    return following


def _stored(kept: dict[str, Stored], name: str, spill: Spill) -> Stored:
    """The list kept under `name`, a new one at first."""
    if name not in kept:
        kept[name] = spill.stored()
    return kept[name]


def _mapped_moments(
    run: list[Projection], values: Iterator[dict[str, np.ndarray]], batches: list[Batch], original: Sequence[np.ndarray]
) -> Iterator[tuple[Moments, Moments]]:
    """The moments of projections that read one tensor and add to no stream (Q, K and V; gate and up): x from the
    pruned model's `values`, against the original tensor z they read (`original`, per batch), once for all of them;
    each projection's own then follow from its weights (`Moments.mapped`), without computing its outputs."""
    name = run[0].activations[0]
    # only held-out errors need ‖y‖², and the products of z that give it
    fit = Gathered(Moments(len(run[0].rows), run[0].inputs))
    check = Gathered(Moments(len(run[0].rows), run[0].inputs, track_partner=True))
    for index, (batch, found) in enumerate(zip(batches, values)):
        (check if batch.held_out else fit).add(token_rows(found[name], batch.tokens), original[index])
    fit, check = fit.result(), check.result()
    for projection in run:
        target = projection.target
        yield fit.mapped(target[:-1], target[-1]), check.mapped(target[:-1], target[-1])


def _narrower_output(projection: Projection) -> bool:
    """Whether the projection's kept outputs are fewer than its inputs (then they are kept rather than its input)."""
    return len(projection.columns) < projection.inputs


def _original_target(projection: Projection, kept: dict[str, Stored], names: list[str], batch: int):
    """The original projection's output for batch `batch` (from its kept output, or from the tensor it reads), plus
    the original stream it is added to, at the kept outputs."""
    activation, *stream = names
    target = (
        kept[projection.weight][batch] if _narrower_output(projection) else projection.outputs(kept[activation][batch])
    )
    return target + kept[stream[0]][batch][:, projection.columns] if stream else target


def _same_reads(projections: list[Projection], streams: dict[str, str | None]) -> list[list[Projection]]:
    """The projections in runs of consecutive ones that read the same tensors."""
    return [list(run) for _, run in groupby(projections, key=lambda p: tuple(_read(p, streams)))]


def _read(projection: Projection, streams: dict[str, str | None]) -> list[str]:
    """What a stream refit reads of a model: the projection's input, and the stream its output is added to."""
    stream = streams[projection.weight]
    return [projection.activations[0]] + ([stream] if stream else [])


def _runs(
    model: onnx.ModelProto, names: list[str], batches: list[Batch], state: Sequence[dict[str, np.ndarray]] | None
) -> Iterator[dict[str, np.ndarray]]:
    """`names` batch by batch, from the values in `state` (what the layers below computed, per batch; from the graph
    inputs when None) of which those named are passed on as they are. When every name is passed on (a projection that
    reads the layer's input itself, as Q reads a fused norm's output), no model runs: a graph without nodes makes no
    session."""
    cut = {} if state is None else {name: value.dtype for name, value in state[0].items()}
    computed = [name for name in names if name not in cut]
    run = session(truncated(model, computed, cut)) if computed else None
    inputs = [i.name for i in run.get_inputs()] if run else []
    for index, batch in enumerate(batches):
        feeds = {**batch.feeds, **({} if state is None else state[index])}
        values = dict(zip(computed, run.run(computed, {name: feeds[name] for name in inputs}))) if run else {}
        yield {name: values[name] if name in values else feeds[name] for name in names}


def _whole_model_moments(
    original: onnx.ModelProto, model: onnx.ModelProto, projection: Projection, batches: list[Batch]
) -> tuple[Moments, Moments]:
    """x = what `model` computes at the kept inputs, y = the original projection's outputs, both models run from the
    graph inputs: for a reader of the stream past the last layer (a pooler), after every layer's refit."""
    runs = [session(truncated(m, [projection.activations[0]])) for m in (original, model)]
    fit, check = (Gathered(Moments(len(projection.rows), len(projection.columns))) for _ in range(2))
    for batch in batches:
        before, after = (token_rows(run.run(None, batch.feeds)[0], batch.tokens) for run in runs)
        (check if batch.held_out else fit).add(after, projection.outputs(before))
    return fit.result(), check.result()


def residual_stream(model: onnx.ModelProto, node_index: int) -> str | None:
    """The stream that the output of the linear node is added to (past a bias Add, and the Reshape back from the
    (tokens, channels) rows a Gemm works on), or None when it is not added to one by a plain Add (a fused skip-add)."""
    constants = {t.name for t in model.graph.initializer} | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensor = model.graph.node[node_index].output[0]
    while len(readers := consumers.get(tensor, [])) == 1 and readers[0].op_type in ("Add", "Reshape"):
        other = next((name for name in readers[0].input if name != tensor), None)
        if readers[0].op_type == "Add" and (other is None or other not in constants):
            return other
        tensor = readers[0].output[0]
    return None


def output_reference(
    original: ort.InferenceSession,
    calibration: Calibration,
    indices: Sequence[int],
    batch_size: int = 32,
    folder: Path | None = None,
) -> Reference:
    """The original's first output, from its session, on the samples that `recover` holds out (`check_runs`)."""
    return Reference(outputs_of(original, check_runs(calibration, indices, output_width(original), batch_size)), folder)


def check_runs(
    calibration: Calibration, indices: Sequence[int], width: int | None, batch_size: int = 32
) -> list[dict[str, np.ndarray]]:
    """The feeds of the samples that `recover` holds out of `indices` (`_batches`), for the output error: its
    held-out batches, a few samples a run where both models' outputs (`width` per token) would pass `RUN_BYTES`
    (`fidelity.run_size`)."""
    runs = []
    for batch in _batches(calibration, indices, batch_size):
        if not batch.held_out:
            continue
        samples = batch_length(batch.feeds)
        step = run_size(width, 1 if batch.tokens is None else batch.tokens.shape[1], samples)
        runs += [
            {name: value[start : start + step] for name, value in batch.feeds.items()}
            for start in range(0, samples, step)
        ]
    return runs


def _output_error(reference: Reference, model: onnx.ModelProto) -> float:
    """Mean squared difference of the first output from the original's (at unpadded tokens when it has a sequence
    axis), a few rows at a time (a decoder's float64 squares of 25 x 256 x 32,000 logits were 1.6 GB)."""
    compressed = session(model)
    total, count = 0.0, 0
    for feeds, original in reference:
        tokens = token_mask(feeds)
        original, output = token_rows(original, tokens), token_rows(compressed.run(None, feeds)[0], tokens)
        total += sum(
            float(np.square(original[i : i + ROWS] - output[i : i + ROWS], dtype=np.float64).sum())
            for i in range(0, len(original), ROWS)
        )
        count += original.size
    return total / max(count, 1)


def _batches(calibration: Calibration, indices: Sequence[int], batch_size: int) -> list[Batch]:
    """Fit and held-out batches, each ordered by length; every CHECK_EVERY-th sample is held out (with a single
    sample there is nothing to fit on, and nothing is refit)."""
    check = list(indices[::CHECK_EVERY])
    held_out = set(check)
    fit = [i for i in indices if i not in held_out]
    return [
        Batch(feeds, token_mask(feeds), part is check)
        for part in (fit, check)
        for feeds in calibration.batches(calibration.by_length(part), batch_size)
    ]


def _layer_outputs(
    model: onnx.ModelProto,
    names: list[str],
    cut: dict[str, np.dtype],
    batches: list[Batch],
    state: Sequence[np.ndarray] | None,
) -> Iterator[list[np.ndarray]]:
    """`names` computed batch by batch, from the layer's input in `state` (from the graph inputs when None)."""
    run = session(truncated(model, names, cut))
    inputs = [i.name for i in run.get_inputs()]
    for index, batch in enumerate(batches):
        feeds = {**batch.feeds, **({} if state is None else {name: state[index] for name in cut})}
        yield run.run(names, {name: feeds[name] for name in inputs})


def _targets(
    original: onnx.ModelProto,
    mine: list[Projection],
    after: list[str],
    cut: dict[str, np.dtype],
    batches: list[Batch],
    state: Sequence[np.ndarray] | None,
    spill: Spill,
) -> tuple[list[Stored], Stored]:
    """Per projection and batch, the original projection's outputs at unpadded tokens; and the next layer's input."""
    targets = [spill.stored() for _ in mine]
    following = spill.stored()
    names = [p.activations[0] for p in mine] + after
    for batch, outputs in zip(batches, _layer_outputs(original, names, cut, batches, state)):
        for found, projection, z in zip(targets, mine, outputs):
            found.append(projection.outputs(token_rows(z, batch.tokens)))
        for value in outputs[len(mine) :]:
            following.append(value)
    return targets, following


def _moments(
    projection: Projection, batches: list[Batch], activations: Iterator[np.ndarray], targets: Sequence[np.ndarray]
) -> tuple[Moments, Moments]:
    """Moments of x (the pruned model's kept units) with partner y (the original projection's outputs), over the
    unpadded tokens of the fit and of the held-out batches."""
    fit, check = (Gathered(Moments(len(projection.rows), len(projection.columns))) for _ in range(2))
    for batch, x, y in zip(batches, activations, targets):
        (check if batch.held_out else fit).add(token_rows(x, batch.tokens), y)
    return fit.result(), check.result()


def _system(moments: Moments, width: int) -> tuple[np.ndarray, np.ndarray, float]:
    """E[x̃ x̃ᵀ], E[x̃ yᵀ] and E‖y‖², with x̃ = [x, 1] cut to its first `width` entries (no 1 without a bias)."""
    n = max(moments.count, 1)
    xx = np.block([[moments.gram, moments.total[:, None]], [moments.total[None, :], np.array([[n]])]])
    xy = np.vstack([moments.cross, moments.partner_total[None, :]])
    xx /= n
    xy /= n
    return xx[:width, :width], xy[:width], moments.partner_squares / n


def _squared_error(a: np.ndarray, xx: np.ndarray, xy: np.ndarray, yy: float) -> float:
    """E ‖x̃ a - y‖² from second moments."""
    return float(np.sum(a * (xx @ a)) - 2 * np.sum(a * xy) + yy)


def _refit(
    projection: Projection, fit: Moments, check: Moments, decompositions: LastDecomposition | None = None
) -> tuple[Refit, np.ndarray]:
    """The ridge λ that does best on held-out tokens, and whether it beats the plain slice; the weights applied are
    then solved with that λ on all calibration tokens (fit and held-out), the error reported is the held-out one."""
    inputs, width = len(projection.rows), projection.width
    held_out = _system(check, width)
    energy = max(held_out[2], 1e-30)
    current = projection.sliced()
    before = _squared_error(current, *held_out) / energy
    best_error, best_ridge = before, 0.0
    path = RidgePath(fit, check, projection.has_bias, decompositions) if fit.count and projection.skip is None else None
    for ridge in RIDGES if path else ():
        error = path.error(ridge)
        if error is not None and error / energy < best_error:
            best_error, best_ridge = error / energy, ridge
    refit = Refit(
        projection.layer,
        projection.kind,
        projection.weight,
        before,
        best_error,
        best_ridge,
        best_ridge > 0,
        projection.skip,
    )
    if not refit.applied:
        return refit, current
    all_xx, all_xy, _ = _system(fit.merged(check), width)
    all_xx[np.diag_indices(inputs)] += best_ridge * path.scale  # in place; the bias takes no ridge
    on_all = _solve(all_xx, all_xy)
    return refit, path.solution(best_ridge) if on_all is None else on_all


class RidgePath:
    """The ridge solutions of one fit system for every λ, and their held-out errors, from one eigendecomposition.

    With a bias the bias is left out of the penalty, which makes the fit that of centred inputs and targets: with M
    the (centred) second moments of the fit inputs, R their products with the targets and M = V diag(e) Vᵀ, the
    solution is w(λ) = V diag(d) Vᵀ R, d = 1 / (e + λ s). Its held-out error E‖x̃ w̃ - y‖² (H, h, η: the held-out
    moments about the fit means) is dᵀ (Vᵀ H V ⊙ R̃ R̃ᵀ) d - 2 d·g + η, R̃ = Vᵀ R, g = rowsums(R̃ ⊙ Vᵀ h): each λ then
    costs a product of n numbers with an n x n matrix instead of a solve with every target column (the FFN's up
    projection refit as a reader has 4 outputs per input). s is the mean second moment of the inputs."""

    def __init__(
        self, fit: Moments, check: Moments, has_bias: bool, decompositions: LastDecomposition | None = None
    ) -> None:
        fit_n, check_n = max(fit.count, 1), max(check.count, 1)
        self.has_bias = has_bias
        self.scale = max(float(np.mean(fit.second_moment_diag())), 1e-12)
        self.x_mean, self.y_mean = fit.mean, fit.partner_total / fit_n
        if has_bias:
            x_shift, y_shift = check.mean - self.x_mean, check.partner_total / check_n - self.y_mean
            second, cross = fit.covariance(), fit.cross_covariance()
            held, held_cross = check.covariance(), check.cross_covariance()
            held += np.outer(x_shift, x_shift)
            held_cross += np.outer(x_shift, y_shift)
            y_held = check.partner_total / check_n
            self.energy = check.partner_squares / check_n - 2 * self.y_mean @ y_held + self.y_mean @ self.y_mean
        else:
            second, cross = fit.gram / fit_n, fit.cross / fit_n
            held, held_cross, self.energy = check.gram / check_n, check.cross / check_n, check.partner_squares / check_n
        self.values, self.vectors, held_rotated = (decompositions or LastDecomposition()).of(second, held)
        self.rotated = self.vectors.T @ cross
        self.quadratic = held_rotated * (self.rotated @ self.rotated.T)
        self.linear = np.sum(self.rotated * (self.vectors.T @ held_cross), axis=1)

    def _weights(self, ridge: float) -> np.ndarray | None:
        denominators = self.values + ridge * self.scale
        return None if (denominators <= 0).any() else 1 / denominators

    def error(self, ridge: float) -> float | None:
        """The held-out squared error of the solution with `ridge`, or None when the system is not positive."""
        d = self._weights(ridge)
        return None if d is None else float(d @ self.quadratic @ d - 2 * d @ self.linear + self.energy)

    def solution(self, ridge: float) -> np.ndarray:
        """The weights (and bias row) solved on the fit moments with `ridge`."""
        weights = self.vectors @ (self.rotated * self._weights(ridge)[:, None])
        return np.vstack([weights, self.y_mean - self.x_mean @ weights]) if self.has_bias else weights


class LastDecomposition:
    """The eigendecomposition of the last fit system, and the held-out system in its basis, for the next refit whose
    systems are the same: Q, K and V (gate and up) read one tensor, so their input moments are equal, to the bit. One
    is held at a time: on TinyLlama's shape that is two eigendecompositions of 2,048 columns a layer where there
    were five, and never every layer's at once."""

    def __init__(self) -> None:
        self._systems: tuple[np.ndarray, np.ndarray] | None = None
        self._found: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def of(self, system: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(eigenvalues, eigenvectors V) of the symmetric `system`, and Vᵀ `held` V."""
        if self._systems is None or not all(map(_same, self._systems, (system, held))):
            values, vectors = np.linalg.eigh(system)
            self._systems, self._found = (system, held), (values, vectors, vectors.T @ held @ vectors)
        return self._found


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def _solve(matrix: np.ndarray, right: np.ndarray) -> np.ndarray | None:
    """The solution, or None when the system is singular or the result not finite."""
    try:
        solved = np.linalg.solve(matrix, right)
    except np.linalg.LinAlgError:
        return None
    return solved if np.isfinite(solved).all() else None


def _write(model: onnx.ModelProto, projection: Projection, weights: np.ndarray, data: DataFile | None = None) -> None:
    matrix = weights[: len(projection.rows)]
    arrays = {projection.weight: matrix.T if projection.transposed else matrix}
    if projection.has_bias:
        arrays.update((bias, weights[-1]) for bias in linear_biases(model, projection.weight))
    replace_initializers(model, arrays, data)
