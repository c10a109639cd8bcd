"""`compress GENAI_FOLDER --out DIR` on the ONNX Runtime GenAI builder's folders (tests/fixtures/genai): the output is
a GenAI folder that onnxruntime_genai loads and generates from, and what it generates is the same pruning done
another way: by hand on the transformers source in torch (without recovery), or the plain ONNX Runtime loop over the
written model (with recovery, with int4)."""

from __future__ import annotations

import json
from pathlib import Path

import genai_loop
import numpy as np
import onnx
import pytest
import tiny_decoders
import torch
import transformers

from command_line.app import run_cli
from compressor.genai_folder import read_config

GENAI = Path(__file__).resolve().parents[1] / "fixtures" / "genai"
SOURCES = {"llama-gqa-fp32": "llama-gqa-hf", "qwen2-gqa-fp32": "qwen2-gqa-hf"}
PROMPT = np.array([1, 10, 20, 30, 40, 50], dtype=np.int64)
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def calibration_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("genai-calib") / "calib.txt"
    path.write_text("\n<|endoftext|>\n".join(tiny_decoders.text(40, seed=7)) + "\n")
    return path


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, calibration_text):
    """compress FIXTURE with extra options, once per combination: the output folder and its report."""
    done: dict = {}

    def get(name: str, *options: str) -> tuple[Path, dict]:
        key = (name, options)
        if key not in done:
            out = tmp_path_factory.mktemp("genai-out") / "out"
            args = [str(GENAI / name), "--keep", "0.6", "--calib", str(calibration_text), "--out", str(out)]
            code = run_cli([*args, "--samples", "24", "--max-length", "32", "--quiet", *options])
            assert code == 0
            done[key] = out, json.loads((out / "report.json").read_text())
        return done[key]

    return get


def genai_greedy(folder: Path, prompt: np.ndarray = PROMPT) -> list[int]:
    return genai_loop.genai_greedy(folder, prompt, NEW_TOKENS)


def ort_greedy(folder: Path) -> tuple[np.ndarray, list[int]]:
    return genai_loop.ort_greedy(folder, PROMPT, NEW_TOKENS)


def torch_pruned(name: str, report: dict) -> transformers.PreTrainedModel:
    """The transformers source of fixture `name`, sliced in torch to the report's kept KV groups and FFN neurons."""
    masks: dict[str, dict[int, np.ndarray]] = {"heads": {}, "ffn": {}}
    for group in report["groups"]:
        mask = np.zeros(group["units_before"], dtype=bool)
        mask[group["kept"]] = True
        if group["kind"] in masks:
            masks[group["kind"]][group["layer"]] = mask
        else:
            assert mask.all(), f"{group['name']} was pruned"
    source = transformers.AutoModelForCausalLM.from_pretrained(
        str(GENAI / SOURCES[name]), attn_implementation="eager", dtype=torch.float32
    ).eval()
    return tiny_decoders.torch_pruned(source, heads=masks["heads"], ffn=masks["ffn"])


def torch_greedy(model: transformers.PreTrainedModel) -> tuple[np.ndarray, list[int]]:
    ids = torch.from_numpy(PROMPT[None])
    with torch.no_grad():
        prefill = model(ids).logits.numpy()
        for _ in range(NEW_TOKENS):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return prefill, ids[0, len(PROMPT) :].tolist()


def cache_heads(folder: Path) -> list[int]:
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return [i.type.tensor_type.shape.dim[1].dim_value for i in graph.input if i.name.endswith(".key")]


@pytest.mark.parametrize("name", SOURCES)
def test_a_pruned_genai_folder_generates_what_torch_pruned_the_same_way_generates(compressed, name):
    out, report = compressed(name, "--no-recover")
    input_files = {p.name for p in (GENAI / name).iterdir()}
    assert {p.name for p in out.iterdir()} == input_files | {"report.json"}  # tokenizer and every other file copied
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)  # as the input has them
    decoder, before = read_config(out)["model"]["decoder"], read_config(GENAI / name)["model"]["decoder"]
    kv = cache_heads(out)
    assert decoder["num_key_value_heads"] == max(kv) < before["num_key_value_heads"]
    assert decoder["num_attention_heads"] == 2 * max(kv)
    assert decoder["head_size"] == before["head_size"] and decoder["hidden_size"] == before["hidden_size"]

    prefill, tokens = torch_greedy(torch_pruned(name, report))
    ort_prefill, ort_tokens = ort_greedy(out)
    assert np.abs(ort_prefill - prefill).max() < 1e-4
    assert genai_greedy(out) == ort_tokens == tokens
    assert tokens != genai_greedy(GENAI / name)  # the pruning changed what the model says


def test_with_recovery_the_genai_folder_generates_what_its_model_computes(compressed):
    out, report = compressed("llama-gqa-fp32")
    assert report["recovery"]["kept"] and any(r["applied"] for r in report["recovery"]["projections"])
    _, tokens = ort_greedy(out)
    assert genai_greedy(out) == tokens


def test_int4_after_pruning_runs_in_ort_genai_close_to_the_float_pruning(compressed):
    out, report = compressed("llama-gqa-fp32", "--no-recover", "--quantize", "int4")
    float_out, float_report = compressed("llama-gqa-fp32", "--no-recover")
    assert report["groups"] == float_report["groups"]
    quantization = report["quantization"]
    assert (quantization["type"], quantization["block_size"], quantization["symmetric"]) == ("int4", 32, True)
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == quantization["matmul_nbits_nodes"] == 11  # 5 per layer and lm_head
    assert {a.i for n in nodes for a in n.attribute if a.name == "accuracy_level"} == {quantization["accuracy_level"]}
    assert (out / "model.onnx.data").stat().st_size < 0.5 * (float_out / "model.onnx.data").stat().st_size
    assert 0.9 < quantization["fidelity"]["mean_cosine"] / report["fidelity"]["mean_cosine"] < 1.1

    prefill, tokens = ort_greedy(out)
    float_prefill, _ = ort_greedy(float_out)
    # int4 tolerance: the GenAI builder's own int4 build of the unpruned model, against its fp32 build
    builder = [np.load(GENAI / f"llama-gqa-{kind}" / "reference.npz")["prefill_logits"] for kind in ("fp32", "int4")]
    tolerance = np.sqrt(np.mean(np.square(builder[0] - builder[1])))
    assert 0 < np.sqrt(np.mean(np.square(prefill - float_prefill))) < 1.5 * tolerance
    assert genai_greedy(out) == tokens


# --- int4 input: the builder's MatMulNBits pruned in whole blocks ---------------------------------------------------


def _initializers(folder: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(folder / "model.onnx"))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("name", ["llama-gqa-int4", "qwen2-gqa-int4"])
def test_an_int4_folder_prunes_in_whole_blocks_and_keeps_its_own_int4_weights(compressed, name):
    out, report = compressed(name, "--no-recover")
    for group in report["groups"]:
        if group["kind"] == "ffn":  # down_proj reads the FFN neurons in int4 blocks of 32
            kept = np.array(group["kept"])
            assert len(kept) % 32 == 0 and 0 < len(kept) < group["units_before"]
            assert np.array_equal(kept.reshape(-1, 32) % 32, np.tile(np.arange(32), (len(kept) // 32, 1)))
    assert report["quantization"]["type"] == "int4 (the input's)" and report["quantization"]["requantized"] == []
    before, after = _initializers(GENAI / name), _initializers(out)
    layer0 = next(g for g in report["groups"] if g["kind"] == "ffn" and g["layer"] == 0)
    blocks = np.array(layer0["kept"][::32]) // 32
    weight = "model.layers.0.mlp.down_proj.MatMul.weight_Q4"
    np.testing.assert_array_equal(after[weight], before[weight][:, blocks])  # the same int4 codes, not requantized
    _, tokens = ort_greedy(out)
    assert genai_greedy(out) == tokens


def test_an_int4_folder_with_recovery_requantizes_what_it_refits_and_generates(compressed):
    out, report = compressed("llama-gqa-int4")
    applied = [r["weight"] for r in report["recovery"]["projections"] if r["applied"]]
    assert report["recovery"]["kept"] and applied
    assert report["quantization"]["requantized"] == applied
    source_bytes = onnx.load(str(GENAI / "llama-gqa-int4" / "model.onnx")).ByteSize()
    assert report["file_bytes"]["before"] == source_bytes > report["file_bytes"]["after"]  # int4 bytes, both
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 11 and {a.i for n in nodes for a in n.attribute if a.name == "accuracy_level"} == {4}
    _, tokens = ort_greedy(out)
    assert genai_greedy(out) == tokens


def test_eval_and_bench_take_a_genai_folder(compressed, calibration_text, capsys):
    out, _ = compressed("llama-gqa-fp32", "--no-recover")
    perplexities = []
    for model in (GENAI / "llama-gqa-fp32", GENAI / "llama-gqa-fp32" / "model.onnx", out):
        assert run_cli(["eval", str(model), "--data", str(calibration_text), "--max-length", "32", "--json"]) == 0
        perplexities.append(json.loads(capsys.readouterr().out)["perplexity"])
    assert perplexities[0] == perplexities[1] != perplexities[2]  # the folder is its decoder file
    args = ["--batch", "1", "--seq", "8", "--runs", "2", "--warmup", "0", "--new-tokens", "3", "--no-memory"]
    assert run_cli(["bench", str(GENAI / "llama-gqa-fp32"), str(out), *args]) == 0
    table = capsys.readouterr().out
    assert "prefill" in table and "decode" in table


def test_a_pruned_hidden_stream_is_written_to_genai_config_and_generates(compressed):
    out, report = compressed("llama-gqa-fp32", "--granularity", "heads,ffn,hidden")
    (hidden,) = (g for g in report["groups"] if g["kind"] == "hidden")
    assert read_config(out)["model"]["decoder"]["hidden_size"] == hidden["units_after"] < hidden["units_before"]
    _, tokens = ort_greedy(out)
    assert genai_greedy(out) == tokens
