"""`compress bench` through the real console entry point on tiny exported models: rows, files, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest

from bench.workload import feeds


def compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "command_line", *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def pair(tiny_folder, tmp_path_factory):
    """The tiny classifier and its compressed copy (keep 0.5), in a folder with the tokenizer."""
    out = tmp_path_factory.mktemp("bench") / "small"
    result = compress(
        str(tiny_folder / "model.onnx"), "--keep", "0.5", "--calib", str(tiny_folder / "calib.tsv"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    return tiny_folder / "model.onnx", out / "model.onnx"


def test_bench_measures_both_models_per_setting_against_the_first(pair, tiny_folder, tmp_path):
    original, small = pair
    report, table = tmp_path / "bench.json", tmp_path / "bench.md"
    result = compress(
        "bench", str(original), str(small), "--providers", "cpu", "--batch", "1,4", "--seq", "8", "--runs", "3",
        "--warmup", "1", "--threads", "1,2", "--data", str(tiny_folder / "calib.tsv"),
        "--json", str(report), "--markdown", str(table),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(report.read_text())
    rows = found["rows"]
    first = f"{original.parent.name}/model.onnx"
    assert [(r["model"], r["threads"], r["batch"]) for r in rows] == [
        (first, 1, 1), ("small/model.onnx", 1, 1), (first, 1, 4), ("small/model.onnx", 1, 4),
        (first, 2, 1), ("small/model.onnx", 2, 1), (first, 2, 4), ("small/model.onnx", 2, 4),
    ]  # fmt: skip
    assert found["settings"]["threads"] == [1, 2] and found["machine"]["cores"] >= 1
    assert found["provider_options"] == {"cpu": {}} or "cpu" in found["provider_options"]
    for row in rows:
        assert row["provider"] == "cpu" and row["seq"] == 8
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["std_ms"] >= 0 and row["spread"] >= 0
        assert row["throughput"] > 0 and row["peak_memory_mb"] > 0 and 0 <= row["accuracy"] <= 1
        assert row["cold_start_ms"] > 0 and row["first_run_ms"] > 0
        assert row["perf_test"].startswith(f"onnxruntime_perf_test -e cpu -m times -r 3 -x {row['threads']} -I ")
        assert f'-f "batch_size:{row["batch"]}"' in row["perf_test"] and row["perf_test"].endswith(row["path"])
    base, other = rows[0], rows[1]
    assert base["speedup"] == 1.0
    # p50s are rounded to a microsecond and a tiny model's run takes tens of them: the ratio of the rounded p50s
    # brackets the speedup, which is computed from the exact ones (and rounded to 0.001)
    half = 0.0005
    low, high = (base["p50_ms"] - half) / (other["p50_ms"] + half), (base["p50_ms"] + half) / (other["p50_ms"] - half)
    assert low - 0.001 <= other["speedup"] <= high + 0.001
    assert other["parameters"] < base["parameters"] and other["file_mb"] < base["file_mb"]
    text = table.read_text()
    assert "| model | provider | threads | batch | seq | p50 ms |" in text and "small/model.onnx" in text
    assert "onnxruntime_perf_test -e cpu" in text and "cpu options:" in text
    assert "speedup" in result.stdout and "small/model.onnx" in result.stdout


def test_feeds_index_inside_the_vocabulary_and_fill_masks(pair):
    model = onnx.load(str(pair[0]))
    arrays = feeds(model, 3, 16)
    rows = next(t.dims[0] for t in model.graph.initializer if "word_embeddings" in t.name)
    assert arrays["input_ids"].shape == (3, 16) and 0 <= arrays["input_ids"].min() < arrays["input_ids"].max() < rows
    assert (arrays["attention_mask"] == 1).all() and (arrays["token_type_ids"] == 0).all()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--providers", "gpu9"], "unknown execution provider 'gpu9'; choose from cpu, cuda"),
        (["--batch", "0,8"], "--batch takes positive integers"),
        (["--seq", "long"], "--seq takes positive integers"),
        (["--runs", "0"], "Invalid value for '--runs': Input should be greater than or equal to 1"),
    ],
)
def test_bad_options_give_one_line_and_exit_code_2(pair, arguments, message):
    result = compress("bench", str(pair[0]), *arguments)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_file_that_is_not_onnx_is_named(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    result = compress("bench", str(text), "--providers", "cpu")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert str(text) in result.stderr and "not a readable ONNX model" in result.stderr


def test_cuda_runs_where_onnxruntime_offers_it_and_is_explained_where_not(pair):
    result = compress("bench", str(pair[0]), "--providers", "cuda", "--batch", "1", "--seq", "8", "--runs", "2")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert result.returncode == 0 and "cuda" in result.stdout, result.stderr
    else:
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
        assert "provider cuda" in result.stderr and "onnxruntime-gpu" in result.stderr
