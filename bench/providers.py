"""Execution providers by short name, and sessions that really run on the provider asked for.

ONNX Runtime quietly falls back to the CPU when a GPU provider cannot start (no driver, missing CUDA libraries), so a
session is checked after creation: a benchmark row never claims a provider that did not run it.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from bench.errors import BenchError
from compressor.timing import timing_options

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}
GPU_PROVIDERS = ("cuda", "tensorrt", "rocm", "migraphx", "dml")
GPU_INSTALL_HINT = (
    "for CUDA install onnxruntime-gpu in place of onnxruntime "
    "(pip uninstall -y onnxruntime && pip install onnxruntime-gpu==<the same version>)"
)


def parse_providers(value: str | None) -> list[str]:
    """Short names from a comma-separated list; None means cpu plus every GPU provider and XNNPACK that this ONNX
    Runtime build offers."""
    if value is None:
        offered = ort.get_available_providers()
        return ["cpu", *(name for name in (*GPU_PROVIDERS, "xnnpack") if PROVIDERS[name] in offered)]
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown or not names:
        raise BenchError(
            f"unknown execution provider {unknown[0] if unknown else value!r}; choose from {', '.join(PROVIDERS)}"
        )
    return list(dict.fromkeys(names))


def unavailable(name: str) -> str | None:
    """Why this ONNX Runtime build cannot use the provider, or None when it can."""
    if PROVIDERS[name] in ort.get_available_providers():
        return None
    hint = f"; {GPU_INSTALL_HINT}" if name == "cuda" else ""
    return f"provider {name} ({PROVIDERS[name]}) is not in this onnxruntime {ort.__version__} build{hint}"


def open_session(model: Path, provider: str, threads: int) -> ort.InferenceSession:
    """A session on `provider` for timing (see `timing_options`)."""
    try:
        session = ort.InferenceSession(str(model), timing_options(threads), providers=[PROVIDERS[provider]])
    except Exception as exc:  # ORT raises several unrelated types for one cause: the model does not load
        raise BenchError(f"ONNX Runtime cannot load {model} on {provider}: {exc}".splitlines()[0]) from exc
    if session.get_providers()[0] != PROVIDERS[provider]:
        raise BenchError(
            f"provider {provider} did not start for {model} (ONNX Runtime fell back to {session.get_providers()[0]}); "
            f"check the GPU driver and CUDA libraries"
        )
    return session
