"""`compress eval`: accuracy and F1 for classifiers, Pearson and Spearman for regressors, on a labelled file;
perplexity for decoder language models, on a text file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from compressor.calibration import (
    Calibration,
    load_calibration,
    load_tokenizer,
    model_inputs,
    read_documents,
    token_stream,
)
from compressor.decoder import DecoderSignature, detect
from compressor.errors import CalibrationError
from compressor.fidelity import session

LOGITS_BUDGET = 2**26  # logits values (float32) one perplexity batch may hold: 256 MiB


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
    stride: int | None = None,
) -> dict:
    """Metrics of `model` on the file: perplexity for a decoder (windows of `max_length` tokens every `stride`,
    non-overlapping by default), else those of `evaluate`."""
    decoder = detect(model)
    if decoder is not None:
        documents = read_documents(path, text_columns)
        tokens = token_stream(documents, load_tokenizer(tokenizer, model_inputs(model), max_length))
        return perplexity(model, decoder, tokens, max_length, stride or max_length, batch_size)
    data = load_calibration(path, model, tokenizer, text_columns, label_column, samples=10**9, max_length=max_length)
    return evaluate(model, data, batch_size)


def windows(total: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding-window recipe: (begin, end, first scored position) of windows of `length` tokens starting every
    `stride`; each token is scored once, in the first window that holds it with context before it (a window's first
    token has none, so `stride == length` leaves one unscored token per window)."""
    spans, scored_to = [], 0
    for begin in range(0, max(total - 1, 1), stride):
        end = min(begin + length, total)
        spans.append((begin, end, max(scored_to, begin + 1)))
        scored_to = end
        if end == total:
            break
    return spans


def perplexity(
    model: onnx.ModelProto,
    decoder: DecoderSignature,
    tokens: np.ndarray,
    max_length: int,
    stride: int,
    batch_size: int = 64,
) -> dict:
    """exp of the mean negative log-likelihood of each token given the tokens before it in its window."""
    if len(tokens) < 2:
        raise CalibrationError(f"perplexity needs at least 2 tokens; the text gives {len(tokens)}")
    if not 0 < stride <= max_length:
        raise CalibrationError(f"the stride must be between 1 and --max-length {max_length}; got {stride}")
    run = session(model)
    spans = windows(len(tokens), max_length, stride)
    rows = max(1, min(batch_size, LOGITS_BUDGET // (max_length * (decoder.vocab or 50_000))))
    total, count = 0.0, 0
    for length in sorted({end - begin for begin, end, _ in spans}):
        same = [s for s in spans if s[1] - s[0] == length]
        for start in range(0, len(same), rows):
            batch = same[start : start + rows]
            ids = np.stack([tokens[begin:end] for begin, end, _ in batch])
            logits = run.run(["logits"], decoder.feeds({"input_ids": ids}))[0]
            for row, (begin, end, first) in zip(logits, batch):
                total += _negative_log_likelihood(row[first - begin - 1 : end - begin - 1], tokens[first:end])
                count += end - first
    return {
        "perplexity": float(np.exp(total / count)),
        "tokens": count,
        "windows": len(spans),
        "max_length": max_length,
        "stride": stride,
    }


def _negative_log_likelihood(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over positions of -log softmax(logits)[target], in float64."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
    return float((log_norm - logits[np.arange(len(targets)), targets]).sum())
