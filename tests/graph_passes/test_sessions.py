"""Sessions at any size: a model over the protobuf limit is opened from a temporary folder with external data.
The limit is lowered to zero here so that every session of a whole `compress` run takes that road on a tiny model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from compressor import compress
from graph_passes import load_model, sessions


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mi-compressor-*")}


def test_exposed_outputs_do_not_stay_in_the_model(tiny_folder):
    model = load_model(tiny_folder / "model.onnx")
    before = [o.name for o in model.graph.output]
    inner = [model.graph.node[5].output[0]]
    session = sessions.cpu_session(model, inner)
    assert [o.name for o in session.get_outputs()] == before + inner
    assert [o.name for o in model.graph.output] == before


def test_a_whole_compress_run_through_files_gives_the_same_model(tiny_folder, monkeypatch):
    """Every ORT session (shape probe, capture, recovery, validation, fidelity) and the checker go through files;
    the result equals the in-memory run's, the input model is not changed, and no temporary folder is left."""
    source = load_model(tiny_folder / "model.onnx")
    options = dict(keep=0.5, samples=48, tokenizer=tiny_folder)
    in_memory = compress(source, tiny_folder / "calib.tsv", **options)
    before = _leftovers()
    monkeypatch.setattr(sessions, "PROTOBUF_LIMIT", 0)
    through_files = compress(source, tiny_folder / "calib.tsv", **options)
    assert _leftovers() == before
    assert through_files.report["fidelity"] == in_memory.report["fidelity"]
    for name, mask in in_memory.masks.items():
        assert np.array_equal(mask, through_files.masks[name])
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in in_memory.model.graph.initializer}
    for tensor in through_files.model.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.DEFAULT
        assert np.array_equal(onnx.numpy_helper.to_array(tensor), weights[tensor.name])
    fresh = load_model(tiny_folder / "model.onnx")  # the input is unchanged, up to how protobuf orders its fields
    assert source.graph.node == fresh.graph.node and source.graph.output == fresh.graph.output
    for mine, theirs in zip(source.graph.initializer, fresh.graph.initializer, strict=True):
        assert mine.name == theirs.name and mine.data_location == onnx.TensorProto.DEFAULT
        assert np.array_equal(onnx.numpy_helper.to_array(mine), onnx.numpy_helper.to_array(theirs))
