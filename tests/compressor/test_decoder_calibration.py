"""Decoders recognised from their graph signature, fed with empty caches and position ids, and calibrated on text cut
into sequences of --max-length tokens."""

from __future__ import annotations

import codecs
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_decoders
import torch

from compressor import calibration as calib
from compressor.decoder import DecoderLayoutError, detect
from compressor.errors import CalibrationError, CalibrationMismatchError


def _load(path) -> onnx.ModelProto:
    return onnx.load(str(path))


@pytest.mark.parametrize("family", tiny_decoders.FAMILIES)
def test_a_decoder_is_recognised_by_its_cache_inputs_and_outputs(decoder_cache, family):
    _, path = decoder_cache(family)
    decoder = detect(_load(path))
    kv_heads = 4 if family == "gpt2" else 2
    assert decoder.layers == tiny_decoders.LAYERS and decoder.vocab == tiny_decoders.VOCAB
    assert [(c.layer, c.kind, c.heads, c.head_dim) for c in decoder.caches] == [
        (layer, kind, kv_heads, 16) for layer in range(tiny_decoders.LAYERS) for kind in ("key", "value")
    ]
    assert decoder.caches[3].output == "present.1.value"
    assert decoder.supplied == {c.name for c in decoder.caches} | {"position_ids"}
    assert [i.name for i in calib.model_inputs(_load(path))] == ["input_ids", "attention_mask"]


def test_an_encoder_is_not_a_decoder(export_cache):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    assert detect(_load(path)) is None


def _edited(path, edit) -> onnx.ModelProto:
    model = _load(path)
    edit(model.graph)
    return model


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda g: g.output.remove(next(o for o in g.output if o.name == "present.1.key")), "no 'present.1.key'"),
        (lambda g: setattr(g.input[3].type.tensor_type.shape.dim[1], "dim_param", "heads"), "batch x heads x past"),
        (lambda g: setattr(g.input[3], "name", "past_key_values.0.keys"), "is not past_key_values.N.key/value"),
        (lambda g: g.input.remove(g.input[4]), "not one key and one value for each layer"),
    ],
)
def test_a_cache_layout_the_tool_does_not_know_is_refused_in_one_line(decoder_cache, edit, message):
    _, path = decoder_cache("llama")
    with pytest.raises(DecoderLayoutError, match=message) as caught:
        detect(_edited(path, edit))
    assert "\n" not in str(caught.value)


def test_feeds_supply_empty_caches_and_positions_counted_over_the_mask(decoder_cache):
    _, path = decoder_cache("qwen2")
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    feeds = detect(_load(path)).feeds({"input_ids": np.full((2, 4), 5), "attention_mask": mask})
    np.testing.assert_array_equal(feeds["position_ids"], [[0, 1, 2, 3], [1, 1, 0, 1]])
    assert feeds["past_key_values.1.value"].shape == (2, 2, 0, 16)
    assert feeds["past_key_values.1.value"].dtype == np.float32
    assert detect(_load(path)).feeds({"input_ids": np.full((1, 3), 5)})["attention_mask"].tolist() == [[1, 1, 1]]


def test_txt_documents_split_on_endoftext_lines_else_on_blank_lines(tmp_path):
    stories = tmp_path / "stories.txt"
    stories.write_bytes(codecs.BOM_UTF8 + b"\n one\n\ntwo \n<|endoftext|>\n\nthree\n<|endoftext|>\n")
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text(" = Title = \n\n\n a b\n c\n\nd\n")
    assert calib.read_documents(stories) == ["one\n\ntwo", "three"]
    assert calib.read_documents(paragraphs) == ["= Title =", "a b\n c", "d"]
    assert [row.line for row in calib._read_rows(stories, plain_text=True)[1]] == [2, 7]


def test_txt_stays_unknown_to_encoders(export_cache, tmp_path):
    _, path = export_cache("bert", "classifier", "optimum-opset17")
    (tmp_path / "c.txt").write_text("hello\n")
    with pytest.raises(CalibrationError, match="unknown calibration format '.txt'.*decoder language models only"):
        calib.load_calibration(tmp_path / "c.txt", _load(path), None)


@pytest.mark.parametrize(("family", "bos", "eos"), [("llama", [1], []), ("gpt2", [], [2])])
def test_the_token_stream_marks_documents_as_the_tokenizer_does(decoder_cache, family, bos, eos):
    _, path = decoder_cache(family)
    tokenizer = calib.load_tokenizer(path.parent, calib.model_inputs(_load(path)))
    stream = calib.token_stream(["w0 w1", "w2"], tokenizer)
    assert stream.tolist() == [*bos, 4, 5, *eos, *bos, 6, *eos]


def _write_formats(folder, texts: list[str]) -> list:
    (folder / "c.txt").write_text("\n<|endoftext|>\n".join(texts) + "\n")
    (folder / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "c.csv").write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)))
    return [folder / name for name in ("c.txt", "c.jsonl", "c.csv")]


def test_text_calibration_of_a_decoder_is_the_token_stream_cut_into_sequences(decoder_cache, tmp_path):
    model, path = decoder_cache("llama")
    texts = tiny_decoders.text(30)
    tokenizer = calib.load_tokenizer(path.parent, calib.model_inputs(_load(path)))
    stream = calib.token_stream(texts, tokenizer)
    for file in _write_formats(tmp_path, texts):
        data = calib.load_calibration(file, _load(path), path.parent, samples=1000, max_length=16)
        assert data.arrays["input_ids"].shape == (len(stream) // 16, 16)
        np.testing.assert_array_equal(data.arrays["input_ids"].ravel(), stream[: len(stream) // 16 * 16])
    drawn = calib.load_calibration(tmp_path / "c.txt", _load(path), path.parent, samples=5, max_length=16, seed=3)
    assert len(drawn) == 5 and {tuple(r) for r in drawn.arrays["input_ids"]} <= {
        tuple(r) for r in data.arrays["input_ids"]
    }
    feeds = next(drawn.batches([0, 1, 2], 2))
    logits = ort.InferenceSession(str(path)).run(["logits"], feeds)[0]
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(feeds["input_ids"])).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_text_shorter_than_one_sequence_is_refused_in_one_line(decoder_cache, tmp_path):
    _, path = decoder_cache("mistral")
    (tmp_path / "short.txt").write_text("w1 w2 w3\n")
    with pytest.raises(CalibrationError, match=r"gives 4 tokens, fewer than one sequence of --max-length 16") as caught:
        calib.load_calibration(tmp_path / "short.txt", _load(path), path.parent, max_length=16)
    assert "\n" not in str(caught.value)


def test_npz_token_ids_alone_calibrate_a_decoder(decoder_cache, tmp_path):
    _, path = decoder_cache("gpt2")
    ids = tiny_decoders.sample_ids(6, 10)
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    data = calib.load_calibration(tmp_path / "ids.npz", _load(path), None, samples=4)
    feeds = next(data.batches(range(4), 4))
    assert set(feeds) == {i.name for i in ort.InferenceSession(str(path)).get_inputs()}
    np.testing.assert_array_equal(feeds["input_ids"], ids[:4])
    assert feeds["attention_mask"].all() and feeds["past_key_values.0.key"].shape == (4, 4, 0, 16)
    np.savez(tmp_path / "bad.npz", input_ids=ids[0])
    with pytest.raises(CalibrationMismatchError, match="'input_ids' has 1 dimensions; the model expects 2"):
        calib.load_calibration(tmp_path / "bad.npz", _load(path), None)


def test_texts_arrays_and_the_synthetic_fallback_feed_a_decoder(decoder_cache):
    _, path = decoder_cache("qwen2")
    model = _load(path)
    from_texts = calib.from_texts(tiny_decoders.text(20), model, path.parent, 12)
    synthetic = calib.synthetic(model, path.parent, samples=7, max_length=12)
    arrays = calib.from_arrays({"input_ids": tiny_decoders.sample_ids(3, 5)}, model, 10)
    assert from_texts.arrays["input_ids"].shape[1] == 12 and len(synthetic) == 7 and len(arrays) == 3
    session = ort.InferenceSession(str(path))
    for data in (from_texts, synthetic, arrays):
        assert data.decoder is not None
        (logits,) = session.run(["logits"], next(data.batches(range(2), 2)))
        assert np.isfinite(logits).all()
