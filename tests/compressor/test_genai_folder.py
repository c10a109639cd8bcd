"""GenAI folders (tests/fixtures/genai, built by onnxruntime-genai 0.18's model builder): finding the model file,
rewriting genai_config.json, and the folder still generating in onnxruntime_genai what a plain ORT loop generates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
from genai_loop import ort_greedy

from compressor.errors import CompressorError
from compressor.genai_folder import CONFIG_FILE, GenAIFolderError, model_path, read_config, updated_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "genai"
RUNNABLE = ["llama-gqa-fp32", "llama-gqa-int4", "llama-gqa-fp32-separate-qkv", "qwen2-gqa-fp32", "qwen2-gqa-int4"]
ALL = RUNNABLE + ["stories260k-int4"]  # head size 8: ORT's CPU GroupQueryAttention refuses it
ARCHITECTURE = {  # (heads, kv heads, head size, hidden) as the builder wrote them
    "llama-gqa": (4, 2, 16, 64),
    "qwen2-gqa": (4, 2, 16, 64),
    "stories260k": (8, 4, 8, 64),
}


def _architecture(name: str) -> tuple[int, int, int, int]:
    return next(value for prefix, value in ARCHITECTURE.items() if name.startswith(prefix))


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _write_config(folder: Path, config: dict) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=4))


def _genai_greedy(folder: Path, prompt: np.ndarray, steps: int) -> np.ndarray:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt.tolist())
    while not generator.is_done():
        generator.generate_next_token()
    return np.asarray(generator.get_sequence(0), np.int64)[len(prompt) :]


@pytest.mark.parametrize("name", ALL)
def test_model_path_finds_the_builders_decoder_file(name):
    path = model_path(FIXTURES / name)
    assert path == FIXTURES / name / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    assert sum(node.op_type == "GroupQueryAttention" for node in graph.node) >= 2


def test_model_path_follows_the_filename_in_the_config(tmp_path):
    folder = _copy("llama-gqa-int4", tmp_path)
    (folder / "model.onnx").rename(folder / "decoder.onnx")
    config = read_config(folder)
    config["model"]["decoder"]["filename"] = "decoder.onnx"
    _write_config(folder, config)
    assert model_path(folder) == folder / "decoder.onnx"


def _one_line_error(folder: Path) -> str:
    with pytest.raises(GenAIFolderError) as caught:
        model_path(folder)
    assert isinstance(caught.value, CompressorError)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_a_folder_without_genai_config_is_refused_in_one_line(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    assert CONFIG_FILE in _one_line_error(tmp_path)


@pytest.mark.parametrize(
    "config",
    [
        {"model": {"decoder": {"head_size": 16}}},
        {"model": {"decoder": {"filename": ""}}},
        {"model": {"type": "llama"}},
        {"search": {}},
    ],
)
def test_a_config_that_names_no_model_file_is_refused_in_one_line(tmp_path, config):
    _write_config(tmp_path, config)
    assert "model.decoder" in _one_line_error(tmp_path)


def test_a_config_that_names_a_missing_file_is_refused_in_one_line(tmp_path):
    _write_config(tmp_path, {"model": {"decoder": {"filename": "absent.onnx"}}})
    assert "absent.onnx" in _one_line_error(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff"])
def test_a_config_that_is_not_a_json_object_is_refused_in_one_line(tmp_path, text):
    (tmp_path / CONFIG_FILE).write_bytes(text.encode("latin-1"))
    _one_line_error(tmp_path)


def test_updated_config_changes_the_architecture_fields_and_nothing_else():
    original = read_config(FIXTURES / "llama-gqa-fp32")
    snapshot = json.dumps(original, sort_keys=True)
    new = updated_config(original, heads=2, kv_heads=1, head_size=32, hidden=48, intermediate=40)
    assert json.dumps(original, sort_keys=True) == snapshot, "the input config was modified"
    decoder = new["model"]["decoder"]
    assert (
        decoder["num_attention_heads"],
        decoder["num_key_value_heads"],
        decoder["head_size"],
        decoder["hidden_size"],
    ) == (2, 1, 32, 48)
    changed = {"num_attention_heads", "num_key_value_heads", "head_size", "hidden_size"}
    old_decoder = original["model"]["decoder"]
    assert {k for k in decoder if decoder[k] != old_decoder.get(k)} == changed
    assert set(decoder) == set(old_decoder)
    assert {k: v for k, v in new["model"].items() if k != "decoder"} == {
        k: v for k, v in original["model"].items() if k != "decoder"
    }
    assert new["search"] == original["search"]


def test_updated_config_keeps_the_hidden_size_when_not_given():
    original = read_config(FIXTURES / "qwen2-gqa-int4")
    new = updated_config(original, heads=2, kv_heads=2, head_size=16, hidden=None, intermediate=None)
    assert new["model"]["decoder"]["hidden_size"] == original["model"]["decoder"]["hidden_size"] == 64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heads": 3, "kv_heads": 2, "head_size": 16, "hidden": None, "intermediate": None},
        {"heads": 0, "kv_heads": 1, "head_size": 16, "hidden": None, "intermediate": None},
        {"heads": 2, "kv_heads": 1, "head_size": 16.0, "hidden": None, "intermediate": None},
        {"heads": 2, "kv_heads": 1, "head_size": 16, "hidden": -1, "intermediate": None},
        {"heads": 2, "kv_heads": 1, "head_size": 16, "hidden": None, "intermediate": True},
    ],
)
def test_updated_config_refuses_impossible_architectures(kwargs):
    with pytest.raises(ValueError):
        updated_config(read_config(FIXTURES / "llama-gqa-fp32"), **kwargs)


def test_updated_config_refuses_a_config_without_a_decoder():
    with pytest.raises(GenAIFolderError, match="model.decoder"):
        updated_config({"model": {}}, heads=2, kv_heads=1, head_size=16, hidden=None, intermediate=None)


@pytest.mark.parametrize("name", ALL)
def test_a_no_op_update_is_the_identity_on_the_builders_config(name):
    config = read_config(FIXTURES / name)
    heads, kv_heads, head_size, hidden = _architecture(name)
    assert updated_config(config, heads, kv_heads, head_size, hidden, None) == config


@pytest.mark.parametrize("name", RUNNABLE)
def test_after_a_no_op_update_the_folder_generates_what_a_plain_ort_loop_generates(name, tmp_path):
    folder = _copy(name, tmp_path)
    reference = np.load(folder / "reference.npz")
    heads, kv_heads, head_size, hidden = _architecture(name)
    _write_config(folder, updated_config(read_config(folder), heads, kv_heads, head_size, hidden, None))
    prompt, steps = reference["prompt"], len(reference["tokens"])
    assert steps == 8
    prefill, ort_tokens = ort_greedy(folder, prompt, steps)
    genai_tokens = _genai_greedy(folder, prompt, steps)
    np.testing.assert_array_equal(genai_tokens, ort_tokens)
    # and both are the model the fixture script recorded
    np.testing.assert_allclose(prefill, reference["prefill_logits"], atol=1e-3 if "int4" in name else 1e-4, rtol=0)
    if "fp32" in name:  # int4 greedy margins can be ~1e-3, so only fp32 tokens are compared across machines
        np.testing.assert_array_equal(ort_tokens, reference["tokens"])
        np.testing.assert_array_equal(ort_tokens, reference["torch_tokens"])


def test_onnxruntime_genai_reads_the_head_size_this_module_writes(tmp_path):
    """The no-op test above is only meaningful if the written config is the one read: a wrong head size fails."""
    folder = _copy("llama-gqa-fp32", tmp_path)
    _write_config(folder, updated_config(read_config(folder), 4, 2, 32, 64, None))
    with pytest.raises(Exception, match="head"):
        _genai_greedy(folder, np.load(folder / "reference.npz")["prompt"], 2)
