"""Exports made under transformers 5 (Reshape with -1, IsNaN/Where mask code), checked against torch outputs
recorded when the fixtures were made (`tests/fixtures/make_transformers5_fixtures.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_slicing import run

from graph_passes import analyze, apply_masks, load_model

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures").glob("tf5-*.onnx"))


def recorded(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    data = dict(np.load(path.with_suffix(".npz")))
    shapes = sorted({key.split(":")[1] for key in data if key.startswith("feed:")})
    return data, shapes


def feeds(data: dict[str, np.ndarray], shape: str) -> dict[str, np.ndarray]:
    prefix = f"feed:{shape}:"
    return {key[len(prefix) :]: value for key, value in data.items() if key.startswith(prefix)}


def test_fixtures_are_present():
    assert len(FIXTURES) == 4


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_transformers5_export_groups_and_masks(path):
    data, shapes = recorded(path)
    analysis = analyze(load_model(path))
    assert [g.units for g in analysis.by_kind("heads")] == [4, 4]
    assert [g.units for g in analysis.by_kind("ffn")] == [96, 96]
    assert analysis.group("hidden").units == 64
    masks = {key[5:]: value for key, value in data.items() if key.startswith("mask:")}
    kept = apply_masks(analysis, {g.name: np.ones(g.units, dtype=bool) for g in analysis.groups})
    heads_ffn = apply_masks(analysis, {k: v for k, v in masks.items() if k != "hidden"})
    everything = apply_masks(analysis, masks, allow_interface_change=True)
    for shape in shapes:
        inputs = feeds(data, shape)
        assert np.abs(run(kept, inputs) - data[f"out:original:{shape}"]).max() <= 1e-5
        assert np.abs(run(heads_ffn, inputs) - data[f"out:heads_ffn:{shape}"]).max() <= 1e-4
        assert np.abs(run(everything, inputs) - data[f"out:all:{shape}"]).max() <= 1e-4
