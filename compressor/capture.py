"""Activation capture: the tensors each group is read through, exposed as extra ORT outputs and streamed into moments.

Per layer l the units are U_l = [head outputs (the attention output projection's input), FFN neurons (the down
projection's input)]; the hidden stream is tapped where layer l reads it (the Q/K/V input) and where the head reads it.
Rows are tokens, padding excluded. A model with a head (a classifier or regressor) is also summarised where the head
reads the stream, one row per sentence, against the top signal T: the labels, else the model's own prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from compressor.calibration import Calibration
from compressor.statistics import Moments
from graph_passes import GraphAnalysis


@dataclass(frozen=True)
class LayerTaps:
    layer: int
    heads: str  # group name
    ffn: str
    heads_tensor: str
    ffn_tensor: str
    hidden_tensor: str
    heads_size: int
    ffn_size: int

    @property
    def size(self) -> int:
        return self.heads_size + self.ffn_size


@dataclass(frozen=True)
class CapturePlan:
    layers: list[LayerTaps]
    top_hidden: str | None  # hidden stream as the head reads it (pooler input); None for encoders
    output: str
    sentence_output: bool  # the output has one row per sentence (a classifier or regressor)


@dataclass
class CapturedStats:
    plan: CapturePlan
    layers: list[Moments]  # U_l, tokens
    hidden: list[Moments]  # h_l against U_l (partner), tokens
    top_hidden: Moments | None  # hidden as the head reads it, against T; None for an encoder without a head
    top_kind: str  # T: "label", "prediction" or "output"


def plan_capture(analysis: GraphAnalysis) -> CapturePlan:
    heads = {g.layer: g for g in analysis.by_kind("heads")}
    ffn = {g.layer: g for g in analysis.by_kind("ffn")}
    layers = []
    for layer in sorted(set(heads) & set(ffn)):
        head, neurons = heads[layer], ffn[layer]
        layers.append(
            LayerTaps(
                layer,
                head.name,
                neurons.name,
                analysis.linear(head.readers[0]).activation,
                analysis.linear(neurons.readers[0]).activation,
                analysis.linear(head.writers[0]).activation,
                head.size,
                neurons.size,
            )
        )
    encoder_weights = {w for g in list(heads.values()) + list(ffn.values()) for w in g.readers + g.writers}
    hidden = analysis.by_kind("hidden")
    head_readers = [w for g in hidden for w in g.readers if w not in encoder_weights]
    output = analysis.model.graph.output[0].name
    sentence_output = len(analysis.values[output].shape) == 2
    top_hidden = analysis.linear(head_readers[0]).activation if head_readers and sentence_output else None
    return CapturePlan(layers, top_hidden, output, sentence_output)


def capture_session(model: onnx.ModelProto, names: Sequence[str]) -> ort.InferenceSession:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])


def token_mask(feeds: dict[str, np.ndarray]) -> np.ndarray:
    mask = feeds.get("attention_mask")
    if mask is None:
        first = next(iter(feeds.values()))
        return np.ones(first.shape[:2], dtype=bool)
    return mask.astype(bool)


def capture(
    analysis: GraphAnalysis,
    calibration: Calibration,
    indices: Sequence[int],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> CapturedStats:
    """Run the model over the chosen samples and accumulate every moment the scorers need."""
    plan = plan_capture(analysis)
    names = [n for t in plan.layers for n in (t.heads_tensor, t.ffn_tensor, t.hidden_tensor)]
    names += [plan.output] + ([plan.top_hidden] if plan.top_hidden else [])
    session = capture_session(analysis.model, names)
    sizes = [t.size for t in plan.layers]
    layers = [Moments(d) for d in sizes]
    hidden_size = analysis.values[plan.layers[0].hidden_tensor].shape[-1]
    hidden = [Moments(hidden_size, d) for d in sizes]
    top_dim, top_kind = _top_signal_shape(analysis, plan, calibration)
    top_hidden = Moments(hidden_size, top_dim, track_partner=True) if plan.top_hidden else None
    done = 0
    for feeds in calibration.batches(indices, batch_size):
        outputs = dict(zip(names, session.run(names, feeds)))
        mask = token_mask(feeds)
        for taps, moments, stream in zip(plan.layers, layers, hidden):
            units = _units(outputs, taps, mask)
            moments.add(units)
            stream.add(outputs[taps.hidden_tensor][mask], units)
        if top_hidden is not None:
            labels = None if calibration.labels is None else calibration.labels[list(indices[done : done + len(mask)])]
            top_hidden.add(outputs[plan.top_hidden], _top_rows(outputs[plan.output], labels, top_dim, top_kind))
        done += len(mask)
        if progress:
            progress(len(mask))
    return CapturedStats(plan, layers, hidden, top_hidden, top_kind if top_hidden is not None else "output")


def _units(outputs: dict[str, np.ndarray], taps: LayerTaps, mask: np.ndarray) -> np.ndarray:
    """U_l rows at unpadded tokens: head outputs, then FFN neurons."""
    return np.concatenate([outputs[taps.heads_tensor][mask], outputs[taps.ffn_tensor][mask]], axis=1)


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
