"""Latency of several models side by side, and the peak memory of a process that runs one of them.

Timed runs are interleaved (A B A B ..., the order rotating every round) so that a slow moment of a noisy machine
falls on every model alike and the ratios between models hold. A run's time is `InferenceSession.run` from numpy in
to numpy out: on a GPU provider it includes the copies to and from the device, as a caller sees it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.errors import BenchError


@dataclass(frozen=True)
class Timing:
    seconds: list[float]
    batch: int

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.seconds, q))

    @property
    def throughput(self) -> float:
        """Sequences per second over all timed runs."""
        return self.batch * len(self.seconds) / sum(self.seconds)


def interleaved(
    sessions: Sequence[ort.InferenceSession], inputs: Sequence[dict], batch: int, warmup: int, runs: int
) -> list[Timing]:
    """`runs` timed runs of every session after `warmup` untimed ones, the sessions taking turns."""
    for session, feed in zip(sessions, inputs):
        for _ in range(warmup):
            session.run(None, feed)
    seconds: list[list[float]] = [[] for _ in sessions]
    for round_number in range(runs):
        shift = round_number % len(sessions)
        for index in [*range(shift, len(sessions)), *range(shift)]:
            start = time.perf_counter()
            sessions[index].run(None, inputs[index])
            seconds[index].append(time.perf_counter() - start)
    return [Timing(s, batch) for s in seconds]


def peak_memory_mb(model: Path, provider: str, threads: int, batch: int, seq: int, runs: int = 2) -> float:
    """Peak resident memory (MB) of a fresh Python process that loads the model on `provider` and runs it `runs`
    times (`python -m bench.peak_memory`; its own imports included)."""
    command = [sys.executable, "-m", "bench.peak_memory", str(model), provider, *map(str, (threads, batch, seq, runs))]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr.strip() or "no output").splitlines()
        raise BenchError(f"measuring the memory of {model} on {provider} failed: {lines[-1]}")
    return float(result.stdout.split()[-1])
