"""The real decoder (../shared/models/stories260k): its README's perplexities, reproduced with its recipe."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from compressor import calibration as calib
from compressor.decoder import detect
from compressor.evaluation import evaluate_file, perplexity

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MODEL = SHARED / "models" / "stories260k"
STORIES = SHARED / "data" / "tinystories" / "valid-head.txt"
WINDOW = 256


@pytest.fixture(scope="module")
def stories260k():
    if not (MODEL / "model.onnx").exists():
        pytest.skip(f"{MODEL} is absent here (.ci/run requires it, so CI always runs this)")
    model = onnx.load(str(MODEL / "model.onnx"))
    tokenizer = calib.load_tokenizer(MODEL, calib.model_inputs(model))
    stories = calib.read_documents(STORIES)
    return model, tokenizer, stories


def test_real_stories260k_is_a_decoder_with_grouped_query_attention(stories260k):
    model, _, stories = stories260k
    decoder = detect(model)
    assert len(stories) == 584
    assert decoder.layers == 5 and {(c.heads, c.head_dim) for c in decoder.caches} == {(4, 8)}


@pytest.mark.parametrize(("half", "tokens", "expected"), [(0, 120_870, 3.881), (1, 107_610, 4.285)])
def test_real_stories260k_perplexity_matches_its_readme(stories260k, half, tokens, expected):
    """README recipe: each story with BOS, concatenated, cut into non-overlapping windows of 256 (the tail that does
    not fill one is left out), every token but a window's first predicted."""
    model, tokenizer, stories = stories260k
    stream = calib.token_stream(stories[:292] if half == 0 else stories[292:], tokenizer)
    result = perplexity(model, detect(model), stream[: len(stream) // WINDOW * WINDOW], WINDOW, WINDOW)
    assert result["tokens"] == tokens
    assert round(result["perplexity"], 3) == expected


def test_real_stories260k_eval_of_a_text_file_scores_every_window(stories260k, tmp_path):
    model, tokenizer, stories = stories260k
    (tmp_path / "head.txt").write_text("\n<|endoftext|>\n".join(stories[:40]) + "\n")
    stream = calib.token_stream(stories[:40], tokenizer)
    result = evaluate_file(model, tmp_path / "head.txt", MODEL, None, None, 128, stride=64)
    assert result["tokens"] == len(stream) - 1 and result["windows"] == -(-(len(stream) - 128) // 64) + 1
    assert 2.5 < result["perplexity"] < 6
