"""`compress inspect` through the real console entry point: output for people, JSON for machines, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest


def compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "command_line", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_inspect_json_lists_groups_with_kind_layer_and_size(export_cache):
    _, path = export_cache("distilbert", "classifier", "torchscript-opset17")
    result = compress("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    kinds = [(g["kind"], g["layer"], g["size"]) for g in report["groups"]]
    assert ("hidden", None, 64) in kinds
    assert ("heads", 0, 64) in kinds and ("heads", 1, 64) in kinds
    assert ("ffn", 1, 96) in kinds
    assert report["cannot_prune_through"] == []


def test_inspect_table_names_groups_and_what_cannot_be_pruned(export_cache, tmp_path):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "Erf")
    node.op_type = "Hardmax"
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    result = compress("inspect", str(edited))
    assert result.returncode == 0, result.stderr
    assert "heads[1]" in result.stdout and "ffn[0]" in result.stdout
    assert f"Hardmax node '{node.name}': no pruning rule for operator Hardmax" in result.stdout


def test_inspect_without_a_model_uses_the_embedded_default():
    result = compress("inspect", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"].endswith("all-MiniLM-L6-v2/model.onnx")
    assert sum(g["kind"] == "heads" for g in report["groups"]) == 6


def _no_groups_model(path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.write_text("not a model"), "not an ONNX model"),
        (lambda p: None, "no such file"),
        (_no_groups_model, "no prunable channel group"),
    ],
    ids=["text-file", "missing", "nothing-prunable"],
)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, make, message):
    path = tmp_path / "model.onnx"
    make(path)
    before = sorted(tmp_path.iterdir())
    result = compress("inspect", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert sorted(tmp_path.iterdir()) == before


def test_compress_writes_model_and_report_beside_the_input(tiny_folder, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes((tiny_folder / "model.onnx").read_bytes())
    result = compress(
        str(model),
        "--keep",
        "0.5",
        "--calib",
        str(tiny_folder / "calib.tsv"),
        "--tokenizer",
        str(tiny_folder),
        "--method",
        "magnitude",
    )
    assert result.returncode == 0, result.stderr
    assert "encoder weights kept: 0.5" in result.stdout and "prediction agreement" in result.stdout
    output = tmp_path / "model.keep0.5.onnx"
    report = json.loads((tmp_path / "model.keep0.5.report.json").read_text())
    assert report["output"] == str(output) and report["method"] == "magnitude"
    onnx.checker.check_model(onnx.load(str(output)))


def test_folder_output_loads_with_optimum_and_transformers(tiny_folder, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    out = tmp_path / "compressed"
    result = compress(
        str(tiny_folder / "model.onnx"),
        "--keep",
        "0.6",
        "--calib",
        str(tiny_folder / "calib.csv"),
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert (out / "report.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = ORTModelForSequenceClassification.from_pretrained(out)
    logits = model(**tokenizer(["w1 w2 w3"], return_tensors="pt")).logits
    assert tuple(logits.shape) == (1, 3)


def test_eval_json(tiny_folder):
    result = compress("eval", str(tiny_folder / "model.onnx"), "--data", str(tiny_folder / "calib.tsv"), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"accuracy", "f1", "pearson", "spearman", "n"} and metrics["n"] == 120
    scores = compress("eval", str(tiny_folder / "model.onnx"), "--data", str(tiny_folder / "calib.jsonl"), "--json")
    assert json.loads(scores.stdout)["pearson"] is not None


def test_main_job_compresses_the_embedded_default_model(tmp_path):
    """README's first command, `compress --keep 0.4`, with fewer synthetic samples to stay quick."""
    result = compress("--keep", "0.4", "--samples", "48", "--out", str(tmp_path / "default.onnx"))
    assert result.returncode == 0, result.stderr
    assert "warning: no calibration data" in result.stderr
    assert "encoder weights kept: 0.4" in result.stdout and "mean cosine" in result.stdout
    report = json.loads((tmp_path / "default.report.json").read_text())
    assert report["top_signal"] == "output" and report["model"].endswith("all-MiniLM-L6-v2/model.onnx")
    fidelity = report["fidelity"]  # a sentence-embedding model: its mean-pooled embeddings are compared too
    assert 0 < fidelity["embedding_cosine"] <= 1 and fidelity["prediction_agreement"] is None
    assert "sentence embedding cosine" in result.stdout


def test_npz_that_does_not_match_the_model_is_refused(tiny_folder, tmp_path):
    np.savez(tmp_path / "calib.npz", input_ids=np.zeros((4, 5), dtype=np.int64))
    result = compress(
        str(tiny_folder / "model.onnx"), "--calib", str(tmp_path / "calib.npz"), "--out", str(tmp_path / "o.onnx")
    )
    assert result.returncode == 2 and "no array 'attention_mask'" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_report_goes_where_report_says_and_model_folder_input_works(tiny_folder, tmp_path):
    """--report in a folder that does not exist yet: created, written atomically (no temporary file left)."""
    report = tmp_path / "reports" / "run1.json"
    result = compress(
        str(tiny_folder),
        "--keep",
        "0.5",
        "--calib",
        str(tiny_folder / "calib.tsv"),
        "--method",
        "magnitude",
        "--out",
        str(tmp_path / "small.onnx"),
        "--report",
        str(report),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(report.read_text())
    assert written["output"] == str(tmp_path / "small.onnx") and written["model"] == str(tiny_folder / "model.onnx")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["reports", "run1.json", "small.onnx"]


def test_eval_of_the_real_decoder_gives_perplexity_over_sliding_windows(tmp_path):
    """stories260k on its first stories: --stride below --max-length scores every token once, with more context, so
    the perplexity is no higher than with non-overlapping windows, over the same tokens but the first."""
    model = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "stories260k"
    stories = (model.parents[1] / "data" / "tinystories" / "valid-head.txt").read_text().split("<|endoftext|>")
    text = tmp_path / "stories.txt"
    text.write_text("<|endoftext|>".join(stories[:20]))
    runs = {
        stride: compress(
            "eval", str(model / "model.onnx"), "--data", str(text), "--max-length", "64", "--json", *stride
        )
        for stride in ((), ("--stride", "32"))
    }
    found = {stride: json.loads(result.stdout) for stride, result in runs.items() if result.returncode == 0}
    assert len(found) == 2, [r.stderr for r in runs.values()]
    plain, sliding = found[()], found[("--stride", "32")]
    assert 1 < sliding["perplexity"] <= plain["perplexity"] < 20
    assert sliding["tokens"] >= plain["tokens"] > 1000
