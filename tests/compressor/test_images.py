"""Image models calibrated and evaluated from a folder of images, prepared as preprocessor_config.json says."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from compressor import compress
from compressor.errors import CalibrationError
from compressor.evaluation import evaluate_file
from compressor.images import read_image_folder
from graph_passes import load_model

PROCESSOR = {"do_resize": True, "size": {"height": 32, "width": 32}, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # fmt: skip


def _images(folder, classes=("cat", "dog"), each=6):
    rng = np.random.default_rng(0)
    for label in classes:
        (folder / label).mkdir(parents=True)
        for i in range(each):
            pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    return folder


@pytest.fixture
def vit_folder(family_cache, tmp_path):
    _, path = family_cache("vit")
    folder = tmp_path / "vit"
    folder.mkdir()
    shutil.copy(path, folder / "model.onnx")
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    return folder


def test_an_image_is_resized_rescaled_normalized_channels_first(tmp_path, vit_folder):
    (tmp_path / "red").mkdir()
    Image.new("RGB", (50, 20), (255, 0, 0)).save(tmp_path / "red" / "a.png")
    pixels, labels = read_image_folder(tmp_path, vit_folder, 32, samples=8, seed=0)
    assert pixels.shape == (1, 3, 32, 32) and labels.tolist() == [0]
    assert np.allclose(pixels[0, 0], 1.0) and np.allclose(pixels[0, 1:], -1.0)


def test_compress_and_eval_from_an_image_folder(vit_folder, tmp_path):
    images = _images(tmp_path / "images")
    result = compress(vit_folder / "model.onnx", images, keep=0.5, samples=12)
    assert result.report["top_signal"] == "label" and result.report["calibration"]["samples"] == 12
    metrics = evaluate_file(load_model(vit_folder / "model.onnx"), images, vit_folder, None, None, 128)
    assert metrics["n"] == 12 and 0 <= metrics["accuracy"] <= 1


def test_subfolders_must_be_the_models_classes(vit_folder, tmp_path):
    (vit_folder / "config.json").write_text(json.dumps({"label2id": {"bird": 0, "fish": 1}}))
    with pytest.raises(CalibrationError, match="subfolder 'cat' is not a class of the model"):
        read_image_folder(_images(tmp_path / "images"), vit_folder, 32, samples=8, seed=0)
