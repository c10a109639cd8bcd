"""Calibration files of every supported kind, and the one-line errors for the ones that cannot be used."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.calibration import load_calibration
from compressor.errors import CalibrationError, CalibrationMismatchError
from graph_passes import load_model


@pytest.fixture(scope="module")
def model(tiny_folder):
    return load_model(tiny_folder / "model.onnx")


@pytest.mark.parametrize("name,kind", [("calib.tsv", "class"), ("calib.csv", "class"), ("calib.jsonl", "score")])
def test_text_files_detect_columns_and_labels(tiny_folder, model, name, kind):
    data = load_calibration(tiny_folder / name, model, tiny_folder, samples=50)
    assert len(data) == 50 and data.label_kind == kind
    feeds = next(data.batches(range(8), 8))
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"][:, 0].tolist() == [2] * 8  # [CLS]
    assert (feeds["attention_mask"] == 0).any()  # padded to the longest of the batch


def test_seed_draws_the_rows(tiny_folder, model):
    drawn = {
        seed: load_calibration(tiny_folder / "calib.tsv", model, tiny_folder, samples=30, seed=seed) for seed in (0, 1)
    }
    again = load_calibration(tiny_folder / "calib.tsv", model, tiny_folder, samples=30, seed=1)
    assert drawn[0].texts != drawn[1].texts and drawn[1].texts == again.texts


def test_sentence_pairs_and_named_columns(tiny_folder, model, tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("premise\thypothesis\tgold\nw1 w2\tw3\t0\nw4\tw5 w6 w7\t1\n")
    data = load_calibration(path, model, tiny_folder, label_column="gold")
    assert data.texts == [("w1 w2", "w3"), ("w4", "w5 w6 w7")] and data.labels.tolist() == [0, 1]
    feeds = next(data.batches([0, 1], 2))
    assert feeds["token_type_ids"][1].max() == 1  # the second sentence of a pair is segment 1
    named = load_calibration(path, model, tiny_folder, text_columns=["hypothesis"], label_column="gold")
    assert named.texts == [("w3",), ("w5 w6 w7",)]


def test_npz_arrays_match_model_inputs(tiny_folder, model, tmp_path):
    arrays = {"input_ids": np.full((4, 6), 9), "attention_mask": np.ones((4, 6)), "token_type_ids": np.zeros((4, 6))}
    np.savez(tmp_path / "ok.npz", **arrays)
    data = load_calibration(tmp_path / "ok.npz", model, None)
    assert len(data) == 4 and next(data.batches(range(4), 4))["attention_mask"].dtype == np.int64
    np.savez(tmp_path / "bad.npz", input_ids=arrays["input_ids"])
    with pytest.raises(CalibrationMismatchError, match="no array 'attention_mask'"):
        load_calibration(tmp_path / "bad.npz", model, None)


@pytest.mark.parametrize(
    "content,options,message",
    [
        ("sentence\tlabel\n", {}, "has no rows"),
        ("words\tlabel\nw1\t1\n", {}, "no text column found among words, label"),
        ("sentence\tlabel\nw1\tgood\n", {}, "line 2: label 'good' in column 'label' is not a number"),
        ("sentence\tlabel\nw1\t1\n", {"text_columns": ["review"]}, "has no column 'review'"),
        ("sentence\tlabel\nw1\t1\n", {"label_column": "gold"}, "has no column 'gold'"),
    ],
)
def test_bad_calibration_files(tiny_folder, model, tmp_path, content, options, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message):
        load_calibration(path, model, tiny_folder, **options)


def test_missing_tokenizer_is_named(model, tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("sentence\nw1\n")
    with pytest.raises(CalibrationError, match="no tokenizer in"):
        load_calibration(path, model, tmp_path)
