"""`compress DECODER --out DIR`: a folder that optimum's ORTModelForCausalLM loads and generates from, with config.json
describing the pruned architecture, and a refusal, before writing, of what config.json cannot describe."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_decoders
import torch

from compressor import recovery
from compressor.budget import stream_share
from compressor.model_config import DecoderConfigError, compressed_config


def compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "command_line", *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def calibration_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("decoder-out-calib") / "calib.txt"
    path.write_text("\n<|endoftext|>\n".join(tiny_decoders.text(60, seed=4)) + "\n")
    return path


def _masks(report: dict, kind: str) -> dict[int, np.ndarray]:
    masks = {}
    for group in report["groups"]:
        if group["kind"] == kind:
            mask = np.zeros(group["units_before"], dtype=bool)
            mask[group["kept"]] = True
            masks[group["layer"]] = mask
    return masks


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_output_folder_generates_the_tokens_of_the_torch_pruned_model(
    decoder_cache, calibration_text, tmp_path, family
):
    from optimum.onnxruntime import ORTModelForCausalLM

    model, path = decoder_cache(family)
    out = tmp_path / "small"
    result = compress(
        str(path.parent), "--keep", "0.5", "--calib", str(calibration_text), "--out", str(out), "--no-recover",
        "--samples", "24", "--max-length", "16", "--batch-size", "8", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("model.onnx", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    heads, ffn = _masks(report, "heads"), _masks(report, "ffn")
    assert sum(int(m.sum()) for m in heads.values()) < sum(len(m) for m in heads.values())
    reference = tiny_decoders.torch_pruned(model, heads, ffn)

    config = json.loads((out / "config.json").read_text())
    original = model.config
    if family == "gpt2":
        assert config["n_head"] == reference.config.n_head < original.n_head
        assert config["n_inner"] == reference.config.n_inner < original.n_inner
        assert config["n_embd"] == config["n_head"] * 16
    else:
        assert config["num_key_value_heads"] == reference.config.num_key_value_heads < original.num_key_value_heads
        assert config["num_attention_heads"] == reference.config.num_attention_heads
        assert config["head_dim"] == 16
        assert config["intermediate_size"] == reference.config.intermediate_size < original.intermediate_size
    assert config["compressed"]["hidden_size"] == 64
    assert config["vocab_size"] == original.vocab_size

    ids = torch.from_numpy(tiny_decoders.sample_ids(2, 5, seed=8))
    settings = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ORTModelForCausalLM.from_pretrained(out, provider="CPUExecutionProvider")
        have = loaded.generate(ids, attention_mask=torch.ones_like(ids), **settings)
        with torch.no_grad():
            want = reference.generate(ids, attention_mask=torch.ones_like(ids), **settings)
    assert have.shape == (2, 13)
    assert torch.equal(have, want)


def test_different_kv_head_counts_per_layer_are_refused_in_one_line(decoder_cache):
    _, path = decoder_cache("llama")
    model = onnx.load(str(path), load_external_data=False)
    cache = next(v for v in model.graph.input if v.name == "past_key_values.1.key")
    cache.type.tensor_type.shape.dim[1].dim_value = 1
    source = json.loads((path.parent / "config.json").read_text())
    with pytest.raises(DecoderConfigError, match=r"different KV head counts per layer \(2, 1\)") as error:
        compressed_config(source, model, {"groups": []})
    assert "\n" not in str(error.value)


def test_an_encoder_config_is_left_as_it_is(tiny_folder):
    model = onnx.load(str(tiny_folder / "model.onnx"), load_external_data=False)
    assert compressed_config({"model_type": "bert"}, model, {"groups": []}) is None


def test_a_tied_lm_head_is_left_as_sliced_when_the_stream_is_refit(tmp_path):
    """stories260k's lm_head reads the embedding through a Transpose: it has no initializer of its own to write a
    refit to, and refitting the embedding would change the tokens' embeddings too. With the hidden stream pruned and
    recovery on, it is left as sliced (the run ended in a KeyError before), and the output still runs."""
    model = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "stories260k"
    text = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinystories" / "valid-head.txt"
    out = tmp_path / "small"
    result = compress(
        str(model), "--keep", "0.8", "--granularity", "heads,ffn,hidden", "--calib", str(text), "--out", str(out),
        "--samples", "16", "--max-length", "32", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    tied = [p for p in report["recovery"]["projections"] if p["layer"] is None]
    assert [p["skipped"] for p in tied] == [recovery.COMPUTED_WEIGHT] and not tied[0]["applied"]
    assert any(p["applied"] for p in report["recovery"]["projections"])


@pytest.mark.parametrize("keep", ["1.0", "0.7"])
def test_pruning_the_hidden_stream_of_a_tied_rmsnorm_decoder_keeps_it_generating(
    decoder_cache, calibration_text, tmp_path, keep
):
    """Llama: RMSNorm over the kept channels, the embedding and the tied lm_head sliced together. All kept, the
    logits are the original's; pruned, the folder still loads and its cache stays self-consistent."""
    from optimum.onnxruntime import ORTModelForCausalLM

    model, path = decoder_cache("llama")
    out = tmp_path / "small"
    result = compress(
        str(path), "--keep", keep, "--granularity", "heads,ffn,hidden", "--calib", str(calibration_text),
        "--out", str(out), "--no-recover", "--samples", "16", "--max-length", "16", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    (hidden,) = [g["units_after"] for g in report["groups"] if g["kind"] == "hidden"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = tiny_decoders.sample_ids(2, 9, seed=6)
    steps = tiny_decoders.onnx_steps(session, ids, prefill=6)
    full = tiny_decoders.onnx_steps(session, ids, prefill=9)[0]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=0)
    if keep == "1.0":
        assert hidden == 64
        for have, want in zip(steps, tiny_decoders.torch_steps(model, ids, prefill=6), strict=True):
            np.testing.assert_allclose(have, want, atol=1e-4, rtol=0)
        return
    assert hidden == round(64 * stream_share(0.7))  # the stream's share, the heads and neurons taking the rest
    assert json.loads((out / "config.json").read_text())["compressed"]["hidden_size"] == hidden
    prompt = torch.from_numpy(ids[:, :4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ORTModelForCausalLM.from_pretrained(out, provider="CPUExecutionProvider")
        tokens = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    assert tokens.shape == (2, 8)


def test_kv_heads_move_in_every_layer_together_so_an_uneven_keep_is_refused_before_any_work(
    decoder_cache, calibration_text, tmp_path
):
    """2 KV heads in each of 2 layers: keep 0.9 of the heads alone would need 2 and 1; the budget moves a decoder's
    KV heads in every layer at once (2 and 2, or 1 and 1), so it is out of reach: one line, nothing written."""
    _, path = decoder_cache("llama")
    out = tmp_path / "small"
    result = compress(
        str(path), "--keep", "0.9", "--granularity", "heads", "--calib", str(calibration_text), "--out", str(out),
        "--no-recover", "--samples", "16", "--max-length", "16", "--quiet",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot be reached by pruning heads" in result.stderr
    assert "same number of KV heads in every layer" in result.stderr and not out.exists()
