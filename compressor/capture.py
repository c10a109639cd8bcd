"""Activation capture: the tensors each group is read through, exposed as extra ORT outputs and streamed into moments.

Per layer l the units are U_l = [head outputs (the attention output projection's input), FFN neurons (the down
projection's input)]; the hidden stream is tapped where layer l reads it (the Q/K/V input) and where the head reads it.
Rows are tokens, padding excluded (a text `attention_mask` says which; without one, as for images, every position
counts). A layer whose weights are applied several times (ALBERT shares one layer's matrices across depths) is
tapped at every application, and its moments pool the rows of all of them. A model with a head (a classifier or
regressor) is also summarised where the head reads the stream, one row per sentence, against the top signal T: the
labels, else the model's own prediction. Every other reader of the hidden stream (the FFN up projections, a pooler
under a per-token output) has its input tapped for its per-channel norm only, so that a score over the stream's
readers (wanda) sees all of them.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compressor.calibration import Calibration
from compressor.statistics import Gathered, Moments
from graph_passes import GraphAnalysis, UnsupportedGraphError, computed_before, layer_cuts, truncated
from graph_passes.external_data import weight_bytes
from graph_passes.sessions import cpu_session

RUN_BYTES = 2**30  # what one run may return to capture
MOMENTS_BYTES = 2**28  # moments one pass may hold, at least (`capture_passes`)


@dataclass(frozen=True)
class LayerTaps:
    layer: int
    heads: str  # group name
    ffn: str
    heads_tensors: tuple[str, ...]  # one per application of the layer's weights, in graph order
    ffn_tensors: tuple[str, ...]
    hidden_tensors: tuple[str, ...]
    heads_size: int
    ffn_size: int

    @property
    def size(self) -> int:
        return self.heads_size + self.ffn_size

    @property
    def hidden_tensor(self) -> str:
        """The layer's input where it is first applied."""
        return self.hidden_tensors[0]

    @property
    def applications(self) -> list[tuple[str, str, str]]:
        """(heads, FFN, hidden) tensors of each application."""
        return list(zip(self.heads_tensors, self.ffn_tensors, self.hidden_tensors))


@dataclass(frozen=True)
class CapturePlan:
    layers: list[LayerTaps]
    top_hidden: str | None  # hidden stream as the head reads it (pooler input); None for encoders
    output: str
    sentence_output: bool  # the output has one row per sentence (a classifier or regressor)
    reader_inputs: list[str]  # inputs of the hidden stream's readers that no tap above captures


@dataclass
class SquareSums:
    """Running sum of x² per channel over rows, and the row count: all that an input norm needs."""

    dim: int
    count: int = 0
    squares: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.squares = np.zeros(self.dim)

    def add(self, rows: np.ndarray) -> None:
        self.count += len(rows)
        self.squares += np.einsum("ij,ij->j", rows, rows, dtype=np.float64)

    def second_moment_diag(self) -> np.ndarray:
        return self.squares / max(self.count, 1)


@dataclass
class CapturedStats:
    plan: CapturePlan
    layers: Sequence[Moments]  # U_l, tokens (a list, or `StoredMoments`)
    hidden: Sequence[Moments]  # h_l against U_l (partner), tokens
    top_hidden: Moments | None  # hidden as the head reads it, against T; None for an encoder without a head
    top_kind: str  # T: "label", "prediction" or "output"
    readers: dict[str, SquareSums]  # per name in plan.reader_inputs


def plan_capture(analysis: GraphAnalysis) -> CapturePlan:
    heads = {g.layer: g for g in analysis.by_kind("heads")}
    ffn = {g.layer: g for g in analysis.by_kind("ffn")}
    layers = []
    for layer in sorted(set(heads) & set(ffn)):
        head, neurons = heads[layer], ffn[layer]
        if not (head.readers and head.writers and neurons.readers):
            continue  # not read through a projection: nothing to tap (scoring refuses such a group)
        layers.append(
            LayerTaps(
                layer,
                head.name,
                neurons.name,
                _activations(analysis, head.readers[0]),
                _activations(analysis, neurons.readers[0]),
                _activations(analysis, head.writers[0]),
                _width(analysis, head.readers[0]),
                _width(analysis, neurons.readers[0]),
            )
        )
    encoder_weights = {w for g in list(heads.values()) + list(ffn.values()) for w in g.readers + g.writers}
    hidden = analysis.by_kind("hidden")
    head_readers = [w for g in hidden for w in g.readers if w not in encoder_weights]
    output = analysis.model.graph.output[0].name
    sentence_output = len(analysis.values[output].shape) == 2
    top_hidden = analysis.linear(head_readers[0]).activation if head_readers and sentence_output else None
    tapped = {name for t in layers for name in t.hidden_tensors} | {top_hidden}
    reader_inputs = [name for g in hidden for w in g.readers for name in _activations(analysis, w)]
    untapped = list(dict.fromkeys(name for name in reader_inputs if name not in tapped))
    return CapturePlan(layers, top_hidden, output, sentence_output, untapped)


def _require_tapped(plan: CapturePlan) -> None:
    """Capture needs at least one layer whose heads and FFN neurons are each read through an output projection."""
    if not plan.layers:
        raise UnsupportedGraphError(
            "no layer has heads and FFN neurons each read through an output projection, so nothing can be measured "
            "on calibration data (try --method magnitude, or see compress inspect)"
        )


def _width(analysis: GraphAnalysis, weight: str) -> int:
    """The channels `weight` reads (a packed-QKV heads group is larger than what its output projection reads)."""
    use = analysis.linear(weight)
    return int(analysis.values[use.activation].shape[-1])


def _activations(analysis: GraphAnalysis, weight: str) -> tuple[str, ...]:
    """What `weight` reads at each of its applications."""
    return tuple(use.activation for use in analysis.uses(weight))


def capture_names(plan: CapturePlan) -> list[str]:
    """The tensors capture reads (the output only when a head's input is summarised against it: a decoder's logits
    are the largest tensor of a run, and capture does not read them)."""
    return _names(plan, plan.layers, True, plan.reader_inputs)


def _names(plan: CapturePlan, taps: list[LayerTaps], last: bool, readers: Sequence[str]) -> list[str]:
    """What a pass over the layers `taps` reads, in the order it asks for them: the inputs of the stream's other
    `readers` it computes; the `last` pass also the head's input and the output."""
    names = [n for t in taps for use in t.applications for n in use]
    head = [plan.output, plan.top_hidden] if plan.top_hidden and last else []
    return names + head + list(readers)


def capture_session(model: onnx.ModelProto, names: Sequence[str]) -> ort.InferenceSession:
    """A session that also returns the inner tensors `names` (any model size; the model is not copied)."""
    return cpu_session(model, names)


def token_mask(feeds: dict[str, np.ndarray]) -> np.ndarray | None:
    """Unpadded positions, (batch, tokens): a text `attention_mask`, else every position of the token ids; None for
    inputs that are not tokens (images, audio features): then every position of an activation counts."""
    mask = feeds.get("attention_mask")
    if mask is not None and mask.ndim == 2:
        return mask.astype(bool)
    ids = next((v for v in feeds.values() if v.ndim == 2 and np.issubdtype(v.dtype, np.integer)), None)
    return None if ids is None else np.ones(ids.shape, dtype=bool)


def token_rows(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Per-token values as rows at unpadded tokens (every token when `mask` is None or does not span the values'
    (batch, tokens) axes); tokens flattened to (batch x tokens, channels), as OPT's FFN computes them, likewise;
    per-sentence values (a pooler's input, (batch, channels)) as they are."""
    if values.ndim == 2 and mask is not None and mask.shape[1] > 1 and len(values) == mask.size:
        return values[mask.reshape(-1)]
    if values.ndim <= 2:
        return values
    if mask is None or mask.shape != values.shape[:2]:
        return values.reshape(-1, values.shape[-1])
    return values[mask]


def batch_length(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def capture(
    analysis: GraphAnalysis,
    calibration: Calibration,
    indices: Sequence[int],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
    session: ort.InferenceSession | None = None,
    stream_cross: bool = True,
    folder: Path | None = None,
) -> CapturedStats:
    """Run the model over the chosen samples and accumulate every moment the scorers need; `session`: one of
    `analysis.model` that exposes `capture_names` (the pipeline's, shared with later stages), else one is made.
    `stream_cross`: also the products of the hidden stream with each layer's units, which only scoring the hidden
    stream reads (TinyLlama's shape: 1.4 GB in float32, and more arithmetic than a forward pass's attention).

    Each run takes at most `batch_size` samples, and fewer when the tensors it returns would pass `RUN_BYTES`. When
    the layers' moments would pass what one pass holds (`capture_passes`), the samples are run once per group of
    layers, the same runs each time, through that group's layers alone (`_chained`): `session` is not used, only one
    group's weights are in memory at a time, and each layer is computed once rather than once a pass. Each group's
    moments go to files in a temporary folder in `folder` (the system's without it), read back one layer at a time
    (`StoredMoments`)."""
    plan = plan_capture(analysis)
    _require_tapped(plan)
    names = capture_names(plan)
    size = run_size(analysis, names, calibration.max_length, batch_size)
    passes = capture_passes(analysis, stream_cross)
    if len(passes) == 1:
        session = session or capture_session(analysis.model, names)
        runs = ((feeds, dict(zip(names, session.run(names, feeds)))) for feeds in calibration.batches(indices, size))
        return _pass(
            analysis, plan.layers, True, plan.reader_inputs, runs, calibration, indices, progress, stream_cross
        )
    layers, hidden = StoredMoments(folder), StoredMoments(folder)
    starts = [positions[0] for positions in passes]
    readers = _pass_readers(analysis.model, plan, starts)
    cuts = layer_cuts(analysis.model, [t.hidden_tensor for t in plan.layers], _reads(plan, passes, readers))
    state: list[dict[str, np.ndarray]] = []  # per run: what the next group's layers read from below
    found: dict[str, SquareSums] = {}
    for number, positions in enumerate(passes):
        taps, last = [plan.layers[p] for p in positions], number + 1 == len(passes)
        following = [] if last else cuts[starts[number + 1]]
        wanted = _names(plan, taps, last, readers[number])
        runs = _chained(analysis.model, wanted, following, calibration.batches(indices, size), state)
        stats = _pass(analysis, taps, last, readers[number], runs, calibration, indices, progress, stream_cross)
        layers.extend(stats.layers)
        hidden.extend(stats.hidden)
        found.update(stats.readers)
    return replace(stats, layers=layers, hidden=hidden, readers=found)


def layered(
    analysis: GraphAnalysis, names: list[str], runs: Sequence[dict[str, np.ndarray]], stream_cross: bool = True
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Each run's feeds and its tensors `names` (computed above the last layer: the outputs), the model run a group
    of layers at a time, in capture's groups (`capture_passes`), as `capture` runs it: no session holds the whole
    model. Every run passes through one group before the next group starts."""
    plan = plan_capture(analysis)
    passes = capture_passes(analysis, stream_cross)
    starts = [positions[0] for positions in passes]
    reads = [[] for _ in plan.layers[:-1]] + [list(names)]
    cuts = layer_cuts(analysis.model, [t.hidden_tensor for t in plan.layers], reads)
    state: list[dict[str, np.ndarray]] = []
    for start in starts[1:]:
        deque(_chained(analysis.model, [], cuts[start], runs, state), maxlen=0)
    yield from _chained(analysis.model, names, [], runs, state)


def _reads(plan: CapturePlan, passes: list[list[int]], readers: list[list[str]]) -> list[list[str]]:
    """Per layer, the tensors a pass reads there; a pass's last layer also what the pass reads above its layers
    (the readers' inputs, and on the last pass the head's input and the output)."""
    reads = [_names(plan, [taps], False, ()) for taps in plan.layers]
    for number, positions in enumerate(passes):
        last = number + 1 == len(passes)
        reads[positions[-1]] = _names(plan, [plan.layers[positions[-1]]], last, readers[number])
    return reads


def _pass_readers(model: onnx.ModelProto, plan: CapturePlan, starts: list[int]) -> list[list[str]]:
    """The inputs of the stream's other readers that each pass computes (those below the next pass's first layer,
    and not below an earlier one's), so that no pass carries them on to the next."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    left, found = list(plan.reader_inputs), []
    for start in starts[1:]:
        below = computed_before(producer, plan.layers[start].hidden_tensor)
        found.append([name for name in left if name in below])
        left = [name for name in left if name not in below]
    return found + [left]


def _chained(
    model: onnx.ModelProto,
    names: list[str],
    following: list[str],
    runs: Iterable[dict[str, np.ndarray]],
    state: list[dict[str, np.ndarray]],
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Each run's feeds and its tensors `names`, from a truncated model that computes them from `state` (what the
    layers below computed, per run; from the graph inputs when empty), whose entries are replaced by what the next
    pass reads (`following`) as each run is done."""
    cut = {name: value.dtype for name, value in state[0].items()} if state else {}
    wanted = list(dict.fromkeys(names + following))
    computed = [name for name in wanted if name not in cut]
    session = cpu_session(truncated(model, computed, cut))
    inputs = [i.name for i in session.get_inputs()]
    for index, feeds in enumerate(runs):
        given = {**feeds, **(state[index] if index < len(state) else {})}
        values = {**given, **dict(zip(computed, session.run(computed, {name: given[name] for name in inputs})))}
        kept = {name: values[name] for name in following}
        if index < len(state):
            state[index] = kept
        else:
            state.append(kept)
        yield feeds, {name: values[name] for name in names}


def _pass(
    analysis: GraphAnalysis,
    taps: list[LayerTaps],
    last: bool,
    inputs: Sequence[str],
    runs: Iterable[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
    calibration: Calibration,
    indices: Sequence[int],
    progress: Callable[[int], None] | None,
    stream_cross: bool,
) -> CapturedStats:
    """One pass over the samples, a run at a time (`runs`: each run's feeds and the tensors the pass reads): the
    moments of the layers `taps`, the norms of the stream's other readers' `inputs`, and on the `last` pass the
    head's."""
    plan = plan_capture(analysis)
    layers = [Gathered(Moments(t.size, precision=np.float32)) for t in taps]  # the largest state: float32
    hidden_size = analysis.values[plan.layers[0].hidden_tensor].shape[-1]
    hidden = [Gathered(Moments(hidden_size, t.size if stream_cross else 0, precision=np.float32)) for t in taps]
    top_dim, top_kind = _top_signal_shape(analysis, plan, calibration)
    top_hidden = Moments(hidden_size, top_dim, track_partner=True) if plan.top_hidden and last else None
    readers = {name: SquareSums(hidden_size) for name in inputs}
    done = 0
    for feeds, values in runs:
        mask, count = token_mask(feeds), batch_length(feeds)
        for layer, moments, stream in zip(taps, layers, hidden):
            for heads, ffn, stream_tensor in layer.applications:
                units = np.concatenate([token_rows(values[heads], mask), token_rows(values[ffn], mask)], axis=1)
                moments.add(units)
                stream.add(token_rows(values[stream_tensor], mask), units)
        for name, sums in readers.items():
            sums.add(token_rows(values[name], mask))
        if top_hidden is not None:
            labels = None if calibration.labels is None else calibration.labels[list(indices[done : done + count])]
            top_hidden.add(values[plan.top_hidden], _top_rows(values[plan.output], labels, top_dim, top_kind))
        done += count
        if progress:
            progress(count)
    layers, hidden = [m.result() for m in layers], [m.result() for m in hidden]
    return CapturedStats(plan, layers, hidden, top_hidden, top_kind if top_hidden is not None else "output", readers)


def capture_passes(analysis: GraphAnalysis, stream_cross: bool = True) -> list[list[int]]:
    """The layers (positions in `plan_capture(analysis).layers`) that each pass of capture accumulates: all of them
    in one pass when their moments fit in `MOMENTS_BYTES` or a quarter of the weights' bytes, whichever is more;
    else consecutive layers, as many as fit, at least one a pass (TinyLlama's shape: 5.6 GB of moments, 1.0 GB a
    pass, six passes; BERT-large's: 3.1 GB, 0.34 GB a pass, twelve; minilm-sst2's 0.11 GB: one). Each layer is
    computed once whatever the passes (`_chained`), so a pass costs little more than its session: with 1 GiB a pass,
    BERT-large's capture held 2.8 GB (2.3x its weights), 1.5 GB with a third of it."""
    plan = plan_capture(analysis)
    if not plan.layers:
        return [[]]
    budget = max(MOMENTS_BYTES, weight_bytes(analysis.model) // 4)
    hidden = analysis.values[plan.layers[0].hidden_tensor].shape[-1]
    passes: list[list[int]] = [[]]
    held = 0
    for position, taps in enumerate(plan.layers):
        size = 4 * (taps.size**2 + hidden * (hidden + (taps.size if stream_cross else 0)))  # float32 products
        if passes[-1] and held + size > budget:
            passes.append([])
            held = 0
        passes[-1].append(position)
        held += size
    return passes


class StoredMoments(Sequence[Moments]):
    """Moments kept in files in a temporary folder, removed with this object (also on error and at exit), and read
    back one at a time: scoring holds one layer's, however many layers there are."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="mi-compressor-moments-", dir=folder)
        self._count = 0

    def _path(self, index: int) -> Path:
        return Path(self._folder.name) / f"{index}.npz"

    def extend(self, found: Sequence[Moments]) -> None:
        for moments in found:
            values = {f.name: getattr(moments, f.name) for f in fields(moments)}
            np.savez(self._path(self._count), **{**values, "precision": np.dtype(moments.precision).name})
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Moments:
        if not -self._count <= index < self._count:
            raise IndexError(index)
        with np.load(self._path(index % self._count)) as stored:
            values = {name: stored[name] for name in stored.files}
        init = {f.name: values[f.name].item() for f in fields(Moments) if f.init}
        moments = Moments(**{**init, "precision": np.dtype(init["precision"]).type})
        for field_ in fields(Moments):
            if not field_.init:
                setattr(moments, field_.name, values[field_.name])
        return moments


def run_size(analysis: GraphAnalysis, names: Sequence[str], tokens: int, batch_size: int) -> int:
    """Samples per run: `batch_size`, or fewer when the tensors `names` of that many samples of `tokens` tokens
    would pass `RUN_BYTES` (each counted as one row of its last axis per token). A TinyLlama-shaped model returns
    0.86 MB of them per token: 7 GB for 32 samples of 256 tokens."""
    per_token = sum(analysis.values[name].shape[-1] * analysis.values[name].dtype.itemsize for name in names)
    return max(1, min(batch_size, RUN_BYTES // max(per_token * tokens, 1)))


def _top_signal_shape(analysis: GraphAnalysis, plan: CapturePlan, calibration: Calibration) -> tuple[int, str]:
    width = analysis.values[plan.output].shape[-1]
    if not plan.sentence_output:
        return width, "output"
    if calibration.label_kind == "class":
        return max(width, int(calibration.labels.max()) + 1), "label"
    if calibration.label_kind == "score":
        return 1, "label"
    return width, "prediction" if width > 1 else "output"


def _top_rows(output: np.ndarray, labels: np.ndarray | None, dim: int, kind: str) -> np.ndarray:
    """One row per sentence: the label (one-hot for classes), the predicted class (one-hot), or the output."""
    if kind == "label" and labels is not None and np.issubdtype(labels.dtype, np.integer):
        return np.eye(dim)[labels]
    if kind == "label":
        return labels.reshape(-1, 1).astype(np.float64)
    if kind == "prediction":
        return np.eye(dim)[output.argmax(axis=1)]
    return output
