"""How closely a compressed model follows the original on the same inputs: prediction agreement and output cosine."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compressor.calibration import Calibration
from compressor.capture import RUN_BYTES, batch_length, token_mask
from compressor.decoder import fit_empty_caches
from graph_passes.sessions import cpu_session

ROWS = 256  # token rows per step of the per-token cosines


class Session(ort.InferenceSession):
    """An ORT session that shapes a decoder's empty cache feeds for its own model, so that one calibration batch
    feeds an original decoder and its pruned copy alike (`compressor.decoder.fit_empty_caches`)."""

    def run(self, output_names, input_feed, run_options=None):
        declared = {i.name: i.shape for i in self.get_inputs()}
        return super().run(output_names, fit_empty_caches(declared, input_feed), run_options)


def session(model: onnx.ModelProto, exposed: Sequence[str] = ()) -> Session:
    """A CPU session of `model`, at any size (`graph_passes.sessions`), that can also return the inner tensors
    `exposed`."""
    return cpu_session(model, exposed, session_class=Session)


class Reference:
    """The original model's first output on a list of runs (each a dict of feeds), computed once and kept in files
    in a temporary folder (inside `folder` when given), removed with this object, and read back a run at a time: each
    model compared with the original then runs alone, never beside a session of the whole original (on TinyLlama's
    shape that pair held 11.8 GB for 4.1 GB of weights), and the original's outputs are not computed again for each
    comparison. `outputs`: each run's feeds and the original's output on them (`outputs_of` a session, or the model
    run a group of layers at a time, `capture.layered`)."""

    def __init__(self, outputs: Iterable[tuple[dict[str, np.ndarray], np.ndarray]], folder: Path | None = None) -> None:
        self.runs: list[dict[str, np.ndarray]] = []
        self._folder = tempfile.TemporaryDirectory(prefix="mi-compressor-reference-", dir=folder)
        for feeds, output in outputs:
            np.save(self._path(len(self.runs)), output)
            self.runs.append(feeds)

    def _path(self, index: int) -> Path:
        return Path(self._folder.name) / f"{index}.npy"

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Each run's feeds and the original's output on them."""
        for index, feeds in enumerate(self.runs):
            yield feeds, np.load(self._path(index))


def outputs_of(
    original: ort.InferenceSession, runs: Iterable[dict[str, np.ndarray]]
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Each run's feeds and the session's first output on them (it may expose inner tensors as well)."""
    first = [original.get_outputs()[0].name]
    for feeds in runs:
        yield feeds, original.run(first, feeds)[0]


def held_out_runs(
    calibration: Calibration, indices: Sequence[int], width: int | None, batch_size: int = 32
) -> list[dict[str, np.ndarray]]:
    """The feeds of the samples `indices`, ordered by length, `batch_size` samples a run, fewer where both models'
    outputs (`width` wide per token) would pass `RUN_BYTES` (`run_size`)."""
    return list(
        calibration.batches(calibration.by_length(indices), run_size(width, calibration.max_length, batch_size))
    )


def compare(reference: Reference, compressed: ort.InferenceSession) -> dict:
    """Mean cosine between the original's first output (`reference`) and the compressed model's (per sentence, or
    per unpadded token); for classifiers the fraction of samples on which the predicted class agrees; for per-token
    outputs (an encoder's hidden states, which sentence-embedding models mean-pool) the mean cosine of the
    mean-pooled sentence embeddings."""
    cosines, agree, embedded = [], [], []
    for feeds, a in reference:
        b = compressed.run(None, feeds)[0]
        if a.ndim == 3:
            tokens, sentences = _per_token_cosines(a, b, _positions(feeds, a))
            cosines.append(tokens)
            embedded.append(sentences)
            continue
        if a.shape[-1] > 1:
            agree.append(a.argmax(axis=-1) == b.argmax(axis=-1))
        cosines.append(_cosine(a.reshape(len(a), -1), b.reshape(len(b), -1)))
    found = {
        "samples": sum(batch_length(feeds) for feeds in reference.runs),
        "prediction_agreement": float(np.concatenate(agree).mean()) if agree else None,
        "mean_cosine": float(np.concatenate(cosines).mean()),
    }
    if embedded:
        found["embedding_cosine"] = float(np.concatenate(embedded).mean())
    return found


def run_size(width: int | None, tokens: int, batch_size: int) -> int:
    """Samples per run: `batch_size`, or fewer when both models' first outputs for that many samples of `tokens`
    tokens, `width` per token (None: one), would pass `RUN_BYTES` (a decoder's logits: 32 samples of 256 tokens over
    32,000 words are 1 GB each)."""
    per_sample = 2 * 4 * tokens * (width or 1)
    return max(1, min(batch_size, RUN_BYTES // per_sample))


def output_width(original: ort.InferenceSession | onnx.ModelProto) -> int | None:
    """The last axis of the first output as the session or the model declares it; None when it is not a number."""
    if isinstance(original, onnx.ModelProto):
        last = original.graph.output[0].type.tensor_type.shape.dim[-1]
        return last.dim_value if last.HasField("dim_value") else None
    last = original.get_outputs()[0].shape[-1]
    return last if isinstance(last, int) else None


def _per_token_cosines(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of two per-token outputs at each unpadded token and of their mean-pooled sentences, a few rows at a
    time: float64 copies of a decoder's logits over a whole batch (32 x 128 x 32,000 floats: 0.5 GB in float32) made
    fidelity the peak of `compress`. The values are those of the whole batch at once, to the bit: no part holds a
    single row unless all tokens do (einsum sums a lone row in another order)."""
    flat_a, flat_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    rows = np.flatnonzero(mask.reshape(-1))
    parts = np.array_split(rows, max(1, -(-len(rows) // ROWS)))
    tokens = np.concatenate([_cosine(flat_a[part], flat_b[part]) for part in parts])
    pooled = [np.concatenate([_mean_pooled(x[i : i + 1], mask[i : i + 1]) for i in range(len(x))]) for x in (a, b)]
    return tokens, _cosine(*pooled)


def _positions(feeds: dict[str, np.ndarray], values: np.ndarray) -> np.ndarray:
    """The unpadded positions of a per-token output: the text mask when it spans the output's (batch, tokens) axes,
    else every position (image patches, audio frames)."""
    mask = token_mask(feeds)
    return mask if mask is not None and mask.shape == values.shape[:2] else np.ones(values.shape[:2], dtype=bool)


def _mean_pooled(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    return (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
