"""Sessions at any size: a model over the lent limit is opened from a temporary folder with external data.
The limits are lowered to zero here so that every session of a whole `compress` run takes that road on a tiny model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from compressor import compress
from graph_passes import external_data, load_model, sessions


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mi-compressor-*")}


@pytest.fixture()
def private_temp(tmp_path, monkeypatch):
    """Temporary folders made in a folder of this test's own (other processes' cannot be told apart in /tmp)."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_exposed_outputs_do_not_stay_in_the_model(tiny_folder):
    model = load_model(tiny_folder / "model.onnx")
    before = [o.name for o in model.graph.output]
    inner = [model.graph.node[5].output[0]]
    session = sessions.cpu_session(model, inner)
    assert [o.name for o in session.get_outputs()] == before + inner
    assert [o.name for o in model.graph.output] == before


def test_a_whole_compress_run_through_files_gives_the_same_model(tiny_folder, monkeypatch, private_temp):
    """Every ORT session (shape probe, capture, recovery, validation, fidelity) and the checker go through files;
    the result equals the in-memory run's, the input model is not changed, and no temporary folder is left."""
    source = load_model(tiny_folder / "model.onnx")
    options = {"keep": 0.5, "samples": 48, "tokenizer": tiny_folder}
    in_memory = compress(source, tiny_folder / "calib.tsv", **options)
    monkeypatch.setattr(sessions, "LENT_LIMIT", 0)
    monkeypatch.setattr(sessions, "PROTOBUF_LIMIT", 0)
    through_files = compress(source, tiny_folder / "calib.tsv", **options)
    assert not _leftovers()
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


def test_the_temporary_folder_goes_also_when_the_session_fails(tiny_folder, monkeypatch, private_temp):
    """A model held in memory and handed to ONNX Runtime through files, whose session creation is interrupted (Ctrl-C
    while ONNX Runtime reads it), leaves no folder behind; the data file held every large tensor at an aligned
    offset, and the model itself is not changed."""
    monkeypatch.setattr(sessions, "LENT_LIMIT", 0)
    model = load_model(tiny_folder / "model.onnx")
    with sessions.referenced(model) as (graph, folder):
        assert (folder / sessions.DATA_FILE).is_file() and folder.parent == private_temp
        spans = [
            (int(e.value), tensor)
            for tensor in graph.graph.initializer
            for e in tensor.external_data
            if e.key == "offset"
        ]
        assert spans and all(offset % 64 == 0 for offset, _ in spans)
        assert all(
            offset % external_data.ALIGNMENT == 0
            for offset, t in spans
            if external_data.nbytes(t) >= external_data.ALIGNMENT
        )
    assert not _leftovers()

    def interrupted(graph: bytes, options, **kwargs):
        assert (Path(options.get_session_config_entry(sessions.EXTERNAL_FOLDER)) / sessions.DATA_FILE).is_file()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sessions.cpu_session(model, session_class=interrupted)
    assert not _leftovers()
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)


def test_a_model_in_memory_lends_its_weights_and_computes_the_same(tiny_folder):
    """ONNX Runtime is lent the large tensors (raw bytes or typed fields alike) instead of parsing them from the
    serialized model, and computes exactly what a session of the serialized model computes."""
    model = load_model(tiny_folder / "model.onnx")
    large = next(t for t in model.graph.initializer if external_data.nbytes(t) > 4096 and t.raw_data)
    typed = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(large).copy(), large.name)
    typed.float_data.extend(onnx.numpy_helper.to_array(large).ravel())
    typed.ClearField("raw_data")
    large.CopyFrom(typed)
    handed = []

    def watched(graph: bytes, options, **kwargs):
        handed.append(len(graph))
        return onnxruntime.InferenceSession(graph, options, **kwargs)

    session = sessions.cpu_session(model, session_class=watched)
    lent = [t for t in model.graph.initializer if not external_data.stays_inline(t)]
    assert len(session.lent_initializers) == len(lent) > 0
    assert handed[0] < model.ByteSize() - sum(external_data.nbytes(t) for t in lent) + 100 * len(lent)
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=sessions.CPU)
    feeds = {i.name: np.ones([2, 7], np.int64) for i in reference.get_inputs()}
    for mine, theirs in zip(session.run(None, feeds), reference.run(None, feeds), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_large_tensor_that_nothing_reads_is_not_lent(tiny_folder):
    """ONNX Runtime drops initializers that no node reads before it takes the lent ones, and would then refuse a lent
    one it cannot find (a dequantized int4 model keeps its packed weights so)."""
    model = load_model(tiny_folder / "model.onnx")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "nobody.reads"))
    session = sessions.cpu_session(model)
    lent = [t for t in model.graph.initializer if not external_data.stays_inline(t)]
    assert len(session.lent_initializers) == len(lent) - 1
    feeds = {i.name: np.ones([1, 5], np.int64) for i in session.get_inputs()}
    assert np.isfinite(session.run(None, feeds)[0]).all()
