"""`compress eval`: accuracy and F1 for classifiers, Pearson and Spearman for regressors, on a labelled file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from compressor.calibration import Calibration, load_calibration
from compressor.errors import CalibrationError
from compressor.fidelity import session


def evaluate(model: onnx.ModelProto, data: Calibration, batch_size: int = 64) -> dict:
    if data.labels is None:
        raise CalibrationError(f"{data.source} has no label column; name it with --label-column")
    run = session(model)
    outputs = np.concatenate([run.run(None, feeds)[0] for feeds in data.batches(range(len(data)), batch_size)])
    if outputs.ndim != 2:
        raise CalibrationError("eval needs a model with one output row per sample (a classifier or regressor)")
    metrics: dict = {"n": len(data), "accuracy": None, "f1": None, "pearson": None, "spearman": None}
    if outputs.shape[1] == 1 or data.label_kind == "score":
        scores = outputs[:, 0] if outputs.shape[1] == 1 else outputs.argmax(axis=1).astype(float)
        metrics["pearson"] = _pearson(scores, data.labels.astype(float))
        metrics["spearman"] = _pearson(_ranks(scores), _ranks(data.labels.astype(float)))
    else:
        predicted = outputs.argmax(axis=1)
        metrics["accuracy"] = float((predicted == data.labels).mean())
        metrics["f1"] = f1(predicted, data.labels, outputs.shape[1])
    return metrics


def f1(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Binary F1 of class 1 for two classes; macro F1 otherwise."""
    chosen = [1] if classes == 2 else range(classes)
    scores = []
    for c in chosen:
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(scores))


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties share their mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / max(np.sqrt((a @ a) * (b @ b)), 1e-12))


def evaluate_file(
    model: onnx.ModelProto,
    path: Path,
    tokenizer: Path | None,
    text_columns,
    label_column,
    max_length: int,
    batch_size: int = 64,
) -> dict:
    data = load_calibration(path, model, tokenizer, text_columns, label_column, samples=10**9, max_length=max_length)
    return evaluate(model, data, batch_size)
