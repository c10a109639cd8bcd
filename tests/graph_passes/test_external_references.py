"""Weights that stay in their files: a model saved with external data is read as references, its values are memory
maps, its sessions read the file itself, sliced weights go to a data file of the caller's, and the model written
from all of that holds the same values."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.large_models import Shape, build
from bench.workload import feeds
from graph_passes import analyze, apply_masks, load_model
from graph_passes.external_data import (
    ALIGNMENT,
    DataFile,
    is_external,
    location,
    materialize_in_place,
    model_bytes,
    serialized_bytes,
    tensor_array,
)
from graph_passes.model_io import save_with_data
from graph_passes.sessions import EXTERNAL_FOLDER, check_model, cpu_session

SHAPE = Shape(layers=2, hidden=32, heads=4, ffn=64, vocab=50, positions=16)


@pytest.fixture()
def external(tmp_path) -> Path:
    return build(SHAPE, tmp_path / "model" / "model.onnx")


@pytest.fixture()
def private_temp(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _batch(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return feeds(model, 2, 8)


def test_a_model_read_from_disk_refers_to_its_weights(external):
    model = load_model(external, referenced=True)
    data = (external.parent / "model.onnx.data").resolve()
    large = [t for t in model.graph.initializer if is_external(t)]
    assert large and all(location(t) == data and not t.raw_data for t in large)
    inline = onnx.load(str(external))
    assert model.ByteSize() < 20_000 and model_bytes(model) == inline.ByteSize()  # counted without reading the data
    assert serialized_bytes(model) == model.ByteSize() and serialized_bytes(inline) == inline.ByteSize()
    for tensor, loaded in zip(model.graph.initializer, inline.graph.initializer, strict=True):
        value = tensor_array(tensor)
        assert isinstance(value, np.memmap) == is_external(tensor)
        assert np.array_equal(value, onnx.numpy_helper.to_array(loaded))
    with pytest.raises(ValueError):
        tensor_array(large[0])[...] = 0  # read-only: the user's file is never written
    assert not any(is_external(t) for t in load_model(external).graph.initializer)  # by default: read into memory


def test_a_session_reads_the_users_file_without_a_copy(external, private_temp):
    """No temporary file is written for a model whose weights are all in files: ONNX Runtime maps the input's data
    file, and computes what a session opened from the path computes."""
    model = load_model(external, referenced=True)
    made = []

    def watched(graph: bytes, options, **kwargs):
        made.append((list(private_temp.iterdir()), options.get_session_config_entry(EXTERNAL_FOLDER)))
        return ort.InferenceSession(graph, options, **kwargs)

    session = cpu_session(model, session_class=watched)
    assert made == [([], str(external.parent.resolve()))]
    mapped = {line.split()[-1] for line in Path(f"/proc/{os.getpid()}/maps").read_text().splitlines()}
    assert str((external.parent / "model.onnx.data").resolve()) in mapped
    reference = ort.InferenceSession(str(external), providers=["CPUExecutionProvider"])
    batch = _batch(model)
    np.testing.assert_array_equal(session.run(None, batch)[0], reference.run(None, batch)[0])


def test_sliced_weights_go_to_the_data_file_and_the_rest_stay_referred(external, tmp_path):
    model = load_model(external, referenced=True)
    analysis = analyze(model)
    masks = {g.name: np.arange(g.units) % 2 == 0 for g in analysis.groups if g.kind in ("heads", "ffn")}
    in_memory = apply_masks(analysis, masks)
    data = DataFile(tmp_path / "sliced.data")
    referred = apply_masks(analysis, masks, data=data)
    places = {t.name: location(t) for t in referred.graph.initializer if is_external(t)}
    original = (external.parent / "model.onnx.data").resolve()
    assert set(places.values()) == {original, data.path}
    assert places["layer.0.ffn.up.weight"] == data.path and places["embeddings.words"] == original
    for mine, theirs in zip(referred.graph.initializer, in_memory.graph.initializer, strict=True):
        assert np.array_equal(tensor_array(mine), tensor_array(theirs))
    check_model(referred)
    batch = _batch(model)
    np.testing.assert_array_equal(cpu_session(referred).run(None, batch)[0], cpu_session(in_memory).run(None, batch)[0])


def test_a_model_written_with_its_data_holds_the_same_values(external, tmp_path):
    """Weights from two files and from memory end in one data file beside the model, at aligned offsets; the model
    written loads with plain onnx, and materializing the references gives the same model in memory."""
    model = load_model(external, referenced=True)
    analysis = analyze(model)
    masks = {g.name: np.arange(g.units) < g.units // 2 for g in analysis.groups if g.kind == "ffn"}
    pruned = apply_masks(analysis, masks, data=DataFile(tmp_path / "sliced.data"))
    refit = np.full((SHAPE.hidden, SHAPE.ffn // 2), 0.5, np.float32)
    index = next(i for i, t in enumerate(pruned.graph.initializer) if t.name == "layer.1.ffn.up.weight")
    pruned.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(refit, "layer.1.ffn.up.weight"))
    out = tmp_path / "out"
    out.mkdir()
    save_with_data(pruned, out / "small.onnx", "small.onnx.data")
    assert sorted(p.name for p in out.iterdir()) == ["small.onnx", "small.onnx.data"]
    written = onnx.load(str(out / "small.onnx"), load_external_data=False)
    offsets = {t.name: int(e.value) for t in written.graph.initializer for e in t.external_data if e.key == "offset"}
    assert offsets["embeddings.words"] % ALIGNMENT == 0 and all(o % 64 == 0 for o in offsets.values())
    loaded = onnx.load(str(out / "small.onnx"))
    materialize_in_place(pruned)
    assert not any(is_external(t) for t in pruned.graph.initializer)
    for mine, theirs in zip(pruned.graph.initializer, loaded.graph.initializer, strict=True):
        assert mine.name == theirs.name
        assert np.array_equal(onnx.numpy_helper.to_array(mine), onnx.numpy_helper.to_array(theirs))
    assert np.array_equal(tensor_array(loaded.graph.initializer[index]), refit)
