"""The console entry point: checks that one ONNX Runtime package is installed before anything imports it, then
runs the command line. What to install is said in one line: the core leaves the choice of package to the user."""

from __future__ import annotations

import sys
from importlib import metadata

RUNTIMES = ("onnxruntime", "onnxruntime-gpu")
INSTALL_HINT = "pip install 'mi-compressor[cpu]' (or 'mi-compressor[gpu]' for CUDA)"


def installed_runtimes() -> list[str]:
    found = []
    for name in RUNTIMES:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def runtime_problem(found: list[str]) -> str | None:
    """Why ONNX Runtime cannot be used as installed, or None."""
    if not found:
        return f"ONNX Runtime is not installed: {INSTALL_HINT}"
    if len(found) > 1:
        return (
            "onnxruntime and onnxruntime-gpu are both installed and overwrite each other's files: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them"
        )
    return None


def main() -> None:
    problem = runtime_problem(installed_runtimes())
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    from command_line.app import main as run

    run()
