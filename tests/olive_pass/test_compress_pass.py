"""The Olive pass: a workflow (ONNX model -> MiCompress -> OrtTransformersOptimization -> OnnxDynamicQuantization)
gives the model that compress, the fusion and dynamic int8 give when run directly, fused with the pruned head count."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from olive.common.hf.wrapper import ModelWrapper
from onnxruntime.quantization import quantize_dynamic
from onnxruntime.quantization.preprocess import quant_pre_process
from onnxruntime.transformers.optimizer import optimize_model

import olive_pass
from compressor import compress
from compressor.calibration import load_calibration
from olive_pass.compress_pass import data_config_arrays, pruned_attributes

SETTINGS = {"keep": 0.5, "samples": 48, "batch_size": 16, "max_length": 32, "allocation": "uniform"}


@pytest.fixture(scope="module")
def workflow(tiny_folder, tmp_path_factory):
    """The final model of the workflow, its passes in order and the model_attributes each pass output."""
    root = tmp_path_factory.mktemp("olive")
    config = {
        "input_model": {"type": "ONNXModel", "model_path": str(tiny_folder / "model.onnx")},
        "systems": {
            "local": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "passes": {
            "compress": {"type": "MiCompress", "calibration": str(tiny_folder / "calib.tsv"), **SETTINGS},
            "fuse": {"type": "OrtTransformersOptimization"},
            "int8": {"type": "OnnxDynamicQuantization"},
        },
        "host": "local",
        "target": "local",
        "evaluate_input_model": False,
        "output_dir": str(root / "out"),
        "cache_dir": str(root / "cache"),
        "log_severity_level": 3,
    }
    output = olive_pass.run(config)
    final = output.get_best_candidate()
    path = Path(final.model_path)
    model_file = path if path.is_file() else next(path.glob("*.onnx"))
    chain, node = [], output.footprint.nodes[final.model_id]
    while node.parent_model_id is not None:  # from the final model back to the input model's child
        chain.insert(0, (node.from_pass, (node.model_config_data or {}).get("config", {}).get("model_attributes")))
        node = output.footprint.nodes[node.parent_model_id]
    return onnx.load(str(model_file)), [p for p, _ in chain], [a for _, a in chain]


@pytest.fixture(scope="module")
def direct(tiny_folder):
    """compress, ORT's fusion with the pruned head count, then ORT dynamic int8 with Olive's defaults, run here."""
    result = compress(tiny_folder / "model.onnx", tiny_folder / "calib.tsv", **SETTINGS)
    heads = {g["units_after"] for g in result.report["groups"] if g["kind"] == "heads"}
    with tempfile.TemporaryDirectory() as folder:
        onnx.save(result.model, f"{folder}/pruned.onnx")
        fused = optimize_model(f"{folder}/pruned.onnx", model_type="bert", num_heads=heads.pop(), hidden_size=64)
        fused.save_model_to_file(f"{folder}/fused.onnx")
        quant_pre_process(f"{folder}/fused.onnx", f"{folder}/pre.onnx", auto_merge=True)  # Olive's defaults
        quantize_dynamic(f"{folder}/pre.onnx", f"{folder}/int8.onnx", extra_options={"ActivationSymmetric": False})
        return result, onnx.load(f"{folder}/int8.onnx")


def feeds(tiny_folder, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    data = load_calibration(tiny_folder / "calib.tsv", model, tiny_folder, None, None, 32, 32, 0)
    return next(data.batches(range(32), 32))


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in inputs.items() if k in names})[0]


def test_the_workflow_runs_the_three_passes_in_order(workflow):
    _, passes, _ = workflow
    assert [p.lower() for p in passes] == ["micompress", "orttransformersoptimization", "onnxdynamicquantization"]


def test_the_compressed_model_attributes_give_the_pruned_sizes(workflow, direct):
    result, _ = direct
    heads = [g["units_after"] for g in result.report["groups"] if g["kind"] == "heads"]
    ffn = [g["units_after"] for g in result.report["groups"] if g["kind"] == "ffn"]
    assert heads and min(heads) < 4 and ffn and min(ffn) < 96  # it pruned (4 heads, FFN 96 before)
    compressed = workflow[2][0]  # what the fusion after it reads
    assert compressed["num_attention_heads"] == heads[0]
    assert compressed["intermediate_size"] == ffn[0]
    assert compressed["hidden_size"] == 64 and compressed["head_dim"] == 16
    assert compressed["mi_compressor"]["num_attention_heads"] == heads


def test_the_fusion_used_the_pruned_head_count(workflow, direct):
    final, _, _ = workflow
    result, _ = direct
    heads = [g["units_after"] for g in result.report["groups"] if g["kind"] == "heads"]
    attention = [n for n in final.graph.node if n.op_type in ("Attention", "QAttention")]  # int8 gives QAttention
    assert len(attention) == len(heads)
    assert [next(a.i for a in n.attribute if a.name == "num_heads") for n in attention] == heads


def test_the_final_model_is_int8_and_has_the_direct_pipelines_shapes(workflow, direct):
    final, _, _ = workflow
    _, expected = direct
    assert any(n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for n in final.graph.node)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in final.graph.initializer)

    def shapes(model):
        return sorted((t.data_type, tuple(t.dims)) for t in model.graph.initializer)

    assert shapes(final) == shapes(expected)


def test_the_final_model_gives_the_direct_pipelines_outputs(workflow, direct, tiny_folder):
    final, _, _ = workflow
    result, expected = direct
    inputs = feeds(tiny_folder, final)
    got, want = run(final, inputs), run(expected, inputs)
    assert got.shape == (32, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    float_outputs = run(result.model, inputs)  # int8 stays near the float pruned model
    assert np.abs(got - float_outputs).max() <= 0.1 * np.abs(float_outputs).max()


def test_layers_with_different_head_counts_give_the_fusion_zero_heads():
    report = {
        "groups": [
            {"kind": "heads", "units_after": 2},
            {"kind": "heads", "units_after": 3},
            {"kind": "ffn", "units_after": 40},
            {"kind": "ffn", "units_after": 40},
        ]
    }
    base = {"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96}
    attributes = pruned_attributes(base, report)
    assert attributes["num_attention_heads"] == 0 and attributes["intermediate_size"] == 40
    wrapper = ModelWrapper(attributes)  # what OrtTransformersOptimization reads: 0 heads -> read from the graph
    assert not wrapper.num_attention_heads and wrapper.head_dim == 16 and wrapper.hidden_size == 64


def test_distilbert_names_are_updated_where_olive_reads_them_first():
    report = {"groups": [{"kind": "heads", "units_after": 2}, {"kind": "heads", "units_after": 2}]}
    base = {"model_type": "distilbert", "dim": 64, "n_heads": 4, "hidden_dim": 96}
    wrapper = ModelWrapper(pruned_attributes(base, report))
    assert wrapper.num_attention_heads == 2 and wrapper.head_dim == 16


def test_the_package_config_keeps_olives_passes_and_adds_micompress():
    passes = {name.lower() for name in olive_pass.package_config()["passes"]}
    assert {"micompress", "orttransformersoptimization", "onnxdynamicquantization"} <= passes


def test_a_data_config_gives_compress_one_batched_array_per_input(tiny_folder):
    names = ["input_ids", "attention_mask", "token_type_ids"]
    data_config = {
        "name": "calibration",
        "type": "DummyDataContainer",  # unbatched samples of ones, offline
        "load_dataset_config": {"params": {"input_shapes": [[16]] * 3, "input_names": names, "max_samples": 8}},
    }
    arrays = data_config_arrays(data_config, tiny_folder / "model.onnx")
    assert {n: a.shape for n, a in arrays.items()} == {n: (8, 16) for n in names}
    report = compress(tiny_folder / "model.onnx", arrays, keep=0.5, batch_size=8, recover=False).report
    assert report["calibration"]["source"] == "arrays" and report["calibration"]["samples"] == 8


def test_the_example_workflow_names_known_passes_and_micompress_options():
    from olive.hardware import DEFAULT_CPU_ACCELERATOR

    from olive_pass.compress_pass import MiCompress

    example = json.loads((Path(__file__).resolve().parents[2] / "examples" / "olive_workflow.json").read_text())
    known = {name.lower() for name in olive_pass.package_config()["passes"]}
    assert [p["type"].lower() for p in example["passes"].values()] == [
        "micompress",
        "orttransformersoptimization",
        "onnxdynamicquantization",
    ]
    assert all(p["type"].lower() in known for p in example["passes"].values())
    options = {k: v for k, v in example["passes"]["compress"].items() if k != "type"}
    assert set(options) <= set(MiCompress.default_config(DEFAULT_CPU_ACCELERATOR))  # Olive only warns on others
    MiCompress.generate_config(DEFAULT_CPU_ACCELERATOR, options, disable_search=True)  # the values' types
