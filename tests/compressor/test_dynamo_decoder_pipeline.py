"""`compress inspect` and `compress --keep 0.5` end to end on decoders exported by `torch.onnx.export(dynamo=True)`
with their KV cache: text calibration with the tokenizer beside the model, MI masks, recovery, validation. Llama runs
in CI; the other families with `-m slow`."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import tiny_decoders

from command_line.app import run_cli

FAMILIES = [f if f == "llama" else pytest.param(f, marks=pytest.mark.slow) for f in tiny_decoders.FAMILIES]


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_and_compress_give_a_valid_smaller_decoder(dynamo_decoder_cache, tmp_path, capfd, family):
    _, path = dynamo_decoder_cache(family)
    assert run_cli(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capfd.readouterr().out)
    assert {(g["kind"], g["layer"]) for g in summary["groups"]} >= {("heads", 0), ("heads", 1), ("ffn", 0), ("ffn", 1)}
    assert all("GatherND" not in line for line in summary["cannot_prune_through"])
    calib = tmp_path / "calib.txt"
    calib.write_text("\n<|endoftext|>\n".join(tiny_decoders.text(40, seed=9)) + "\n")
    out = tmp_path / "small.onnx"
    args = [str(path), "--keep", "0.5", "--calib", str(calib), "--samples", "24", "--max-length", "16"]
    assert run_cli([*args, "--out", str(out), "--quiet"]) == 0, capfd.readouterr().err
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert abs(report["keep_achieved"] - 0.5) <= 0.05
    assert report["parameters"]["after"] < report["parameters"]["before"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    kept = {g["name"]: g["units_after"] for g in report["groups"]}
    caches = {i.name: i.shape[1] for i in session.get_inputs() if i.name.startswith("past_key_values")}
    assert caches["past_key_values.1.value"] == kept["heads[1]"]
    ids = tiny_decoders.sample_ids(2, 8, seed=2)
    steps = np.concatenate(tiny_decoders.onnx_steps(session, ids, prefill=5), axis=1)
    np.testing.assert_allclose(steps, tiny_decoders.onnx_steps(session, ids, prefill=8)[0], atol=1e-4, rtol=0)
