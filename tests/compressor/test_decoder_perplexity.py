"""Perplexity of a decoder over a text file: the sliding-window recipe, checked against torch."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import tiny_decoders
import torch

from compressor import calibration as calib
from compressor.decoder import detect
from compressor.errors import CalibrationError
from compressor.evaluation import evaluate_file, perplexity, windows


def test_windows_score_every_token_once_with_the_context_of_its_window():
    assert windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert windows(9, 4, 4) == [(0, 4, 1), (4, 8, 5)]  # a last window of one token scores nothing
    for total, length, stride in [(10, 4, 2), (37, 8, 3), (37, 8, 8), (5, 8, 2)]:
        scored = [p for _, end, first in windows(total, length, stride) for p in range(first, end)]
        assert scored == sorted(set(scored)) and set(scored) <= set(range(1, total))
        if stride < length:
            assert scored == list(range(1, total))


def _torch_perplexity(model, tokens: np.ndarray, length: int, stride: int) -> tuple[float, int]:
    total, count = 0.0, 0
    for begin, end, first in windows(len(tokens), length, stride):
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(tokens[None, begin:end])).logits[0].double()
        log_probs = torch.log_softmax(logits[first - begin - 1 : end - begin - 1], dim=-1)
        total -= float(log_probs[torch.arange(end - first), torch.from_numpy(tokens[first:end])].sum())
        count += end - first
    return math.exp(total / count), count


@pytest.mark.parametrize(("family", "stride"), [("llama", 24), ("gpt2", 10)])
def test_perplexity_of_a_text_file_equals_torch_over_the_same_windows(decoder_cache, tmp_path, family, stride):
    model, path = decoder_cache(family)
    texts = tiny_decoders.text(12, seed=5)
    (tmp_path / "eval.txt").write_text("\n\n".join(texts) + "\n")
    onnx_model = onnx.load(str(path))
    result = evaluate_file(onnx_model, tmp_path / "eval.txt", path.parent, None, None, 24, batch_size=3, stride=stride)
    tokenizer = calib.load_tokenizer(path.parent, calib.model_inputs(onnx_model))
    expected, count = _torch_perplexity(model, calib.token_stream(texts, tokenizer), 24, stride)
    assert result["tokens"] == count and (result["max_length"], result["stride"]) == (24, stride)
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert 20 < result["perplexity"] < 1000  # a random model over 120 tokens: near uniform, not degenerate


def test_non_overlapping_windows_are_the_default(decoder_cache, tmp_path):
    _, path = decoder_cache("mistral")
    (tmp_path / "eval.jsonl").write_text("".join(f'{{"text": "{t}"}}\n' for t in tiny_decoders.text(8)))
    result = evaluate_file(onnx.load(str(path)), tmp_path / "eval.jsonl", path.parent, None, None, 16)
    assert result["stride"] == 16 and result["tokens"] > 0


def test_a_stride_outside_the_window_is_refused(decoder_cache):
    _, path = decoder_cache("llama")
    model = onnx.load(str(path))
    with pytest.raises(CalibrationError, match="stride must be between 1 and --max-length 8; got 9"):
        perplexity(model, detect(model), np.arange(4, 40), 8, 9)
