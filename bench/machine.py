"""The machine and software a measurement ran on, for the header of every result."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "transformers", "torch")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpus() -> list[str]:
    """NVIDIA GPU names from nvidia-smi, when there is one."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def describe() -> dict:
    return {
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "cpu": cpu_model(),
        "cores": cores(),
        "gpus": gpus(),
        "versions": versions(),
    }


def header_line(info: dict) -> str:
    gpu = f", GPU {', '.join(info['gpus'])}" if info["gpus"] else ""
    packages = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    return f"{info['date']} on {info['cpu']} ({info['cores']} cores{gpu}); {packages}"


def commit() -> str:
    """The short hash of the checkout's HEAD (what a measured row ran), or "-" outside a git checkout."""
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent
    )
    return found.stdout.strip() or "-"
