"""Timing several ONNX Runtime sessions side by side: the one home of how the product and the benchmark time.

Timed runs are interleaved (A B A B ..., the order rotating every round) so that a slow moment of a noisy machine
falls on every model alike and the ratios between models hold. A run's time is `InferenceSession.run` from numpy in
to numpy out: on a GPU provider it includes the copies to and from the device, as a caller sees it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class Timing:
    seconds: list[float]
    batch: int

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.seconds, q))

    @property
    def spread(self) -> float:
        """Run-to-run spread: (p90 - p10) / p50. A speedup within the baseline's spread is noise."""
        return (self.percentile(90) - self.percentile(10)) / self.percentile(50)

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


def timing_options(threads: int) -> ort.SessionOptions:
    """Session options for timing several sessions in one process: `threads` intra-op threads (0: ONNX Runtime's
    default) that do not spin. Spinning threads of the sessions that wait steal the cores from the one that runs:
    next to four other sessions, the original minilm-sst2 at batch 1 took 56 ms with spinning, 18 ms without."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
