"""Shared fixtures: tiny exported models (built once per session), and the real models when they exist."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402

SHARED_MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "minilm-sst2"


@pytest.fixture(scope="session", autouse=True)
def fresh_default_model_cache(tmp_path_factory):
    """Each run exports the embedded default model once, as a new user's first `compress` would."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MI_COMPRESSOR_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    """Build and export tiny models on demand: (arch, head, style) -> (torch model, onnx path)."""
    built: dict = {}
    root = tmp_path_factory.mktemp("exports")

    def get(arch: str, head: str, style: str):
        key = (arch, head, style)
        if key not in built:
            spec = tiny_models.Spec(arch, head)
            model = tiny_models.build(spec)
            folder = root / "-".join(key)
            folder.mkdir(exist_ok=True)
            built[key] = (model, tiny_models.EXPORTS[style](model, spec, folder))
        return built[key]

    return get


@pytest.fixture(scope="session")
def shared_model_dir() -> Path:
    if not (SHARED_MODEL / "model.onnx").exists():
        pytest.skip(f"{SHARED_MODEL} is absent here (.ci/run requires it, so CI always runs this)")
    return SHARED_MODEL
