"""The console entry point's check of the ONNX Runtime install, which runs before anything imports onnxruntime."""

from __future__ import annotations

import subprocess
import sys

from command_line.entry import INSTALL_HINT, installed_runtimes, runtime_problem


def test_no_runtime_names_the_extras_and_two_runtimes_are_refused():
    assert runtime_problem([]) == f"ONNX Runtime is not installed: {INSTALL_HINT}"
    assert "both installed" in runtime_problem(["onnxruntime", "onnxruntime-gpu"])
    assert runtime_problem(["onnxruntime-gpu"]) is None


def test_this_install_has_exactly_one_runtime():
    assert installed_runtimes() in (["onnxruntime"], ["onnxruntime-gpu"])


def test_a_missing_runtime_is_one_line_before_any_import(tmp_path):
    """A stand-in `importlib.metadata` finds no ONNX Runtime distribution: exit 2, one line, nothing imported."""
    script = (
        "import sys, importlib.metadata as m\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "from command_line.entry import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stderr == f"error: ONNX Runtime is not installed: {INSTALL_HINT}\n"
