"""`compress bench` on decoders: prefill and decode rows per model, interleaved against the first model, through the
real console entry point; the generation loop it times is the model's own greedy generation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_decoders
import torch

from bench.decoding import generate, prompt_feeds
from compressor.decoder import detect


def compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "command_line", *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def decoder_pair(decoder_cache, tmp_path_factory):
    """The tiny Llama and its compressed copy (keep 0.5), each in a folder."""
    _, path = decoder_cache("llama")
    root = tmp_path_factory.mktemp("decoder-bench")
    calib = root / "calib.txt"
    calib.write_text("\n\n".join(tiny_decoders.text(40, seed=2)) + "\n")
    out = root / "small"
    result = compress(
        str(path), "--keep", "0.5", "--calib", str(calib), "--out", str(out), "--samples", "16",
        "--max-length", "16", "--no-recover", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return path, out / "model.onnx"


def test_bench_gives_prefill_and_decode_rows_for_each_model(decoder_pair, tmp_path):
    original, small = decoder_pair
    report, table = tmp_path / "bench.json", tmp_path / "bench.md"
    result = compress(
        "bench", str(original), str(small), "--providers", "cpu", "--batch", "1,2", "--seq", "6", "--new-tokens", "5",
        "--runs", "2", "--warmup", "1", "--threads", "1", "--json", str(report), "--markdown", str(table),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(report.read_text())
    rows = found["rows"]
    first = f"{original.parent.name}/model.onnx"
    assert [(r["model"], r["phase"], r["batch"]) for r in rows] == [
        (first, "prefill", 1), ("small/model.onnx", "prefill", 1), (first, "decode", 1), ("small/model.onnx", "decode", 1),
        (first, "prefill", 2), ("small/model.onnx", "prefill", 2), (first, "decode", 2), ("small/model.onnx", "decode", 2),
    ]  # fmt: skip
    assert found["settings"]["new_tokens"] == 5
    for row in rows:
        assert row["seq"] == 6 and row["p50_ms"] > 0 and row["parameters"] > 0
        if row["phase"] == "decode":
            assert row["new_tokens"] == 5 and row["tokens_per_s"] > 0 and row["ttft_ms"] > 0
            assert "peak_memory_mb" not in row and row["perf_test"] is None
        else:
            assert row["throughput"] > 0 and row["peak_memory_mb"] > 0
            assert '-f "past_sequence_length:0"' in row["perf_test"]
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0
    assert rows[1]["parameters"] < rows[0]["parameters"]
    markdown = table.read_text()
    assert "| phase |" in markdown and "tok/s" in markdown and "TTFT ms" in markdown and "| decode |" in markdown
    assert "decode" in result.stdout and "prefill" in result.stdout


def test_the_timed_generation_is_the_models_own_greedy_generation(decoder_cache):
    model, path = decoder_cache("gpt2")
    graph = onnx.load(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = tiny_decoders.sample_ids(2, 4, seed=3)
    ttft, steps, tokens = generate(session, detect(graph), prompt_feeds(detect(graph), ids), 6)
    with torch.no_grad():
        want = model.generate(
            torch.from_numpy(ids), attention_mask=torch.ones(2, 4, dtype=torch.int64), max_new_tokens=6,
            min_new_tokens=6, do_sample=False, pad_token_id=0,
        )  # fmt: skip
    np.testing.assert_array_equal(tokens, want[:, 4:].numpy())
    assert ttft > 0 and len(steps) == 5 and min(steps) > 0


def test_an_encoder_and_a_decoder_are_refused_together(decoder_pair, tiny_folder):
    original, _ = decoder_pair
    result = compress("bench", str(tiny_folder / "model.onnx"), str(original), "--providers", "cpu", "--no-memory")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "one kind" in result.stderr and "is a decoder" in result.stderr
