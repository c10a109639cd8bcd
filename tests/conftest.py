"""Shared fixtures: tiny exported models (built once per session), a tiny classifier folder with a tokenizer and
labelled files, and the real models when they exist."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_decoders  # noqa: E402
import tiny_families  # noqa: E402
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
def family_cache(tmp_path_factory):
    """Build and export (optimum, opset 17) the tiny model of a family on demand: family -> (torch model, path)."""
    built: dict = {}
    root = tmp_path_factory.mktemp("families")

    def get(family: str):
        if family not in built:
            model = tiny_families.build(family)
            folder = root / family
            folder.mkdir(exist_ok=True)
            built[family] = (model, tiny_families.export_optimum(model, family, folder))
        return built[family]

    return get


@pytest.fixture(scope="session")
def decoder_cache(tmp_path_factory):
    """Build and export (optimum, text-generation-with-past) a tiny decoder on demand: family -> (torch model, path);
    the folder also holds its config and tokenizer."""
    built: dict = {}
    root = tmp_path_factory.mktemp("decoders")

    def get(family: str):
        if family not in built:
            model = tiny_decoders.build(family)
            folder = root / family
            folder.mkdir(exist_ok=True)
            built[family] = (model, tiny_decoders.export_optimum(model, folder))
        return built[family]

    return get


@pytest.fixture(scope="session")
def dynamo_decoder_cache(tmp_path_factory):
    """Build (with random projection biases) and export (`torch.onnx.export(dynamo=True)`, opset 18) a tiny decoder
    on demand: family -> (torch model, path); the folder also holds its config and tokenizer."""
    built: dict = {}
    root = tmp_path_factory.mktemp("dynamo-decoders")

    def get(family: str):
        if family not in built:
            model = tiny_decoders.randomize_biases(tiny_decoders.build(family))
            folder = root / family
            folder.mkdir(exist_ok=True)
            built[family] = (model, tiny_decoders.export_dynamo(model, folder))
        return built[family]

    return get


@pytest.fixture(scope="session")
def shared_model_dir() -> Path:
    if not (SHARED_MODEL / "model.onnx").exists():
        pytest.skip(f"{SHARED_MODEL} is absent here (.ci/run requires it, so CI always runs this)")
    return SHARED_MODEL


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    spec = tiny_models.Spec("bert", "classifier")
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_models.export_optimum(tiny_models.build(spec), spec, folder, 17)
    tiny_models.save_tokenizer(folder)
    rows = tiny_models.sentences(120)
    (folder / "calib.tsv").write_text("sentence\tlabel\n" + "".join(f"{t} \t{y}\n" for t, y in rows))
    (folder / "calib.csv").write_text("id,text,label\n" + "".join(f"{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    (folder / "calib.jsonl").write_text("".join(json.dumps({"text": t, "score": y + 0.5}) + "\n" for t, y in rows))
    return folder
