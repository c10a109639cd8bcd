"""`compress` end to end through the Python API, on tiny models and on the real SST-2 model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tiny_models

from compressor import compress
from compressor.budget import stream_share
from compressor.evaluation import evaluate_file
from compressor.scoring import METHODS
from graph_passes import analyze, load_model
from graph_passes.dead_nodes import drop_dead_nodes


@pytest.mark.parametrize("method", METHODS)
def test_every_method_compresses_to_the_budget(tiny_folder, method):
    result = compress(tiny_folder / "model.onnx", tiny_folder / "calib.tsv", keep=0.5, method=method)
    onnx.checker.check_model(result.model)
    assert drop_dead_nodes(result.model) == 0  # the shape arithmetic slicing replaced is gone
    report = result.report
    assert abs(report["keep_achieved"] - 0.5) <= 0.01
    assert report["encoder_weights"]["after"] < report["encoder_weights"]["before"]
    assert report["file_bytes"]["after"] < report["file_bytes"]["before"]
    assert 0 <= report["fidelity"]["prediction_agreement"] <= 1 and report["fidelity"]["samples"] == 24
    assert report["calibration"] == {
        "source": str(tiny_folder / "calib.tsv"),
        "samples": 120,
        "scored": 96,
        "held_out": 24,
        "held_out_disjoint": True,
    }
    assert report["top_signal"] == ("label" if method in ("mi", "wanda") else None)
    assert report["allocation"] == ("global" if method == "mi" else "uniform")  # an encoder's defaults
    assert report["recovery"]["inputs"] == "stream"  # the default, but for an encoder whose hidden stream is pruned
    sliced = {"prune"} if method != "mi" else set()  # mi's units are chosen again, and sliced, by recovery
    assert set(report["seconds"]) >= {"capture", "scoring", "validate", "fidelity"} | sliced
    heads = [g["units_after"] for g in report["groups"] if g["kind"] == "heads"]
    # global allocation may leave a layer one head: analysed again it has no heads to split, so no heads group
    assert [h for h in heads if h > 1] == [g.units for g in analyze(result.model).by_kind("heads")]


def test_api_takes_a_model_proto_and_a_list_of_texts(tiny_folder):
    texts = [t for t, _ in tiny_models.sentences(50, seed=3)]
    result = compress(load_model(tiny_folder / "model.onnx"), texts, keep=0.6, tokenizer=tiny_folder)
    assert result.report["top_signal"] == "prediction"
    assert abs(result.report["keep_achieved"] - 0.6) <= 0.01


def test_hidden_granularity_and_npz_calibration(export_cache, tmp_path):
    _, path = export_cache("roberta", "classifier", "torchscript-opset17")
    feeds = tiny_models.sample_inputs("roberta", 48, 10, seed=4)
    np.savez(tmp_path / "calib.npz", **feeds)
    result = compress(path, tmp_path / "calib.npz", keep=0.5, granularity=("heads", "ffn", "hidden"))
    hidden = next(g for g in result.report["groups"] if g["kind"] == "hidden")
    assert hidden["units_after"] == round(hidden["units_before"] * stream_share(0.5)) < hidden["units_before"]
    assert result.report["allocation"] == "uniform"  # mi's default once the hidden stream is pruned
    assert analyze(result.model).group("hidden").units == hidden["units_after"]


def test_encoder_without_head_uses_its_output_as_top_signal(export_cache):
    _, path = export_cache("distilbert", "encoder", "optimum-opset17")
    arrays = tiny_models.sample_inputs("distilbert", 40, 9, seed=5)
    result = compress(path, arrays, keep=0.6)
    assert result.report["top_signal"] == "output"
    assert result.report["fidelity"]["prediction_agreement"] is None
    assert 0 < result.report["fidelity"]["mean_cosine"] <= 1


def test_without_calibration_it_warns_and_still_compresses(tiny_folder, capsys):
    result = compress(tiny_folder / "model.onnx", None, keep=0.7, samples=40, quiet=False)
    assert "warning: no calibration data" in capsys.readouterr().err
    assert result.report["calibration"]["source"] == "synthetic"


def test_real_minilm_sst2_mi_beats_random_at_keep_06(shared_model_dir, tmp_path):
    """A small version of BENCHMARKS.md's comparison: 128 calibration sentences, the first 200 dev sentences."""
    rows = (shared_model_dir.parents[1] / "data" / "sst2" / "dev.tsv").read_text().splitlines()
    dev = tmp_path / "dev200.tsv"
    dev.write_text("\n".join(rows[:201]) + "\n")
    train = shared_model_dir.parents[1] / "data" / "sst2" / "train.tsv"
    accuracy = {}
    for method in ("mi", "random"):
        result = compress(shared_model_dir / "model.onnx", train, keep=0.6, method=method, samples=128)
        accuracy[method] = evaluate_file(result.model, dev, shared_model_dir, None, None, 64)["accuracy"]
    original = evaluate_file(load_model(shared_model_dir / "model.onnx"), dev, shared_model_dir, None, None, 64)
    assert accuracy["random"] < accuracy["mi"] <= original["accuracy"] + 0.02
    assert accuracy["mi"] > original["accuracy"] - 0.1


def test_report_flops_are_the_benchmark_definition_with_attention_products(tiny_folder):
    """One definition of FLOPs per token: the report's equal `bench.flops` at the same length, and they exceed
    twice the encoder weights by the attention products (Q K^T and the weighted sum of V)."""
    from bench.flops import matmul_flops_per_token

    result = compress(tiny_folder / "model.onnx", tiny_folder / "calib.tsv", keep=0.5, method="magnitude")
    flops, weights = result.report["flops_per_token"], result.report["encoder_weights"]
    seq = flops["sequence_length"]
    original = load_model(tiny_folder / "model.onnx")
    assert flops["before"] == pytest.approx(matmul_flops_per_token(original, seq), abs=0.5)
    assert flops["after"] == pytest.approx(matmul_flops_per_token(result.model, seq), abs=0.5)
    assert flops["after"] < flops["before"]
    attention = 2 * 2 * seq * 64 * 2  # two products of seq x head widths summing to 64, per token, in 2 layers
    assert flops["before"] >= 2 * weights["before"] + attention


def test_without_calibration_or_tokenizer_inputs_come_from_the_graph(tiny_folder, tmp_path, capsys):
    """A model file alone: token ids drawn below the vocabulary, masks of ones, with a warning (README's promise)."""
    model = tmp_path / "model.onnx"
    model.write_bytes((tiny_folder / "model.onnx").read_bytes())
    result = compress(model, keep=0.5, samples=24, method="magnitude", quiet=True)
    assert "no calibration data (--calib) and no tokenizer" in capsys.readouterr().err
    assert result.report["calibration"]["source"] == "synthetic (from the graph's inputs)"
    assert result.report["fidelity"]["samples"] == 24 and abs(result.report["keep_achieved"] - 0.5) <= 0.01


def test_an_image_model_without_calibration_gets_pixels_of_the_graphs_image_size(family_cache):
    """ViT: pixel_values of the size the shape probe found (32 x 32 here), MI scoring against its own predictions."""
    _, path = family_cache("vit")
    result = compress(path, keep=0.5, samples=24)
    assert result.report["top_signal"] == "prediction"
    assert result.report["fidelity"]["prediction_agreement"] is not None
    assert abs(result.report["keep_achieved"] - 0.5) <= 0.01


def test_global_allocation_differs_from_uniform_and_keeps_the_budget(tiny_folder):
    """mi's default on an encoder moves heads and neurons between layers: the per-layer counts differ from the
    uniform allocation's, the weights kept do not (within the budget's 1%), and the model shipped has the counts the
    report gives."""
    runs = {
        allocation: compress(tiny_folder / "model.onnx", tiny_folder / "calib.tsv", keep=0.4, allocation=allocation)
        for allocation in ("global", "uniform")
    }
    counts = {a: [g["units_after"] for g in r.report["groups"]] for a, r in runs.items()}
    assert counts["global"] != counts["uniform"]
    assert all(abs(r.report["keep_achieved"] - 0.4) <= 0.01 for r in runs.values())
    shipped = {g.units for g in analyze(runs["global"].model).by_kind("ffn")}  # a one-head layer adds its own
    assert {g["units_after"] for g in runs["global"].report["groups"] if g["kind"] == "ffn"} <= shipped
