"""mi-compressor as an Olive pass (the `olive` extra): `MiCompress` prunes an ONNX model inside an Olive workflow.

Olive finds a pass through its package config, which replaces Olive's own list when given: `package_config()` is
Olive's list plus `MiCompress`, and `run(workflow)` runs a workflow with it (`python -m olive_pass FILE` writes it
for `olive run --package-config FILE`). Importing this package does not import Olive.
"""

from olive_pass.package_config import PASS_NAME, package_config, run

__all__ = ["PASS_NAME", "package_config", "run"]
