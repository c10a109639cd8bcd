"""The Olive package config that adds `MiCompress` to Olive's passes, and a workflow runner that uses it."""

from __future__ import annotations

import json
from pathlib import Path

PASS_NAME = "MiCompress"
PASS_ENTRY = {
    "module_path": "olive_pass.compress_pass.MiCompress",
    "supported_providers": ["*"],  # capture and validation run on ONNX Runtime's CPU provider whatever the target
    "supported_accelerators": ["*"],
    "supported_precisions": ["*"],
    "dataset": "dataset_optional",  # a calibration file or data config is advised; without, compress warns
}


def package_config() -> dict:
    """Olive's own package config (olive/olive_config.json of the installed Olive) with `MiCompress` added."""
    from olive.package_config import OlivePackageConfig

    config = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    config["passes"][PASS_NAME] = PASS_ENTRY
    return config


def run(workflow: str | Path | dict, **options):
    """`olive.workflows.run` with `package_config()`: a workflow whose passes may include `"type": "MiCompress"`."""
    from olive.workflows import run as olive_run

    return olive_run(workflow, package_config=package_config(), **options)
