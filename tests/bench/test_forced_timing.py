"""Bench timing with its clock and its timing step replaced: the interleaving order, speedups against the baseline,
and a provider that fell back to the CPU. The sessions are real ONNX Runtime sessions."""

from __future__ import annotations

import shutil
import types

import onnxruntime as ort
import pytest

from bench import deployment
from bench.errors import BenchError
from bench.providers import PROVIDERS, open_session
from bench.workload import feeds, load_graph
from compressor import timing as timing_module
from compressor.timing import Timing, interleaved

DURATIONS = {"a": 0.001, "b": 0.002, "c": 0.004}  # seconds each session's run takes on the fake clock


class Recorded:
    """A real session that logs its name on every run."""

    def __init__(self, name: str, session: ort.InferenceSession, log: list[str]) -> None:
        self.name, self.session, self.log = name, session, log

    def run(self, names, feed):
        self.log.append(self.name)
        return self.session.run(names, feed)


def test_runs_take_turns_and_the_first_runner_rotates(tiny_folder, monkeypatch):
    """Warm-up runs per session first; then every round runs each session once, starting one later each round. The
    fake clock advances by the duration of each run, so each session's timings are exactly its own."""
    log: list[str] = []
    clock = types.SimpleNamespace(perf_counter=lambda: sum(DURATIONS[name] for name in log))
    monkeypatch.setattr(timing_module, "time", clock)
    model = tiny_folder / "model.onnx"
    sessions = [Recorded(name, open_session(model, "cpu", 1), log) for name in DURATIONS]
    feed = feeds(load_graph(model), 2, 8)
    timings = interleaved(sessions, [feed] * 3, batch=2, warmup=2, runs=4)
    assert log == [*"aabbcc", *"abc", *"bca", *"cab", *"abc"]
    for timing, seconds in zip(timings, DURATIONS.values()):
        assert timing.seconds == pytest.approx([seconds] * 4) and timing.batch == 2


def test_speedup_is_the_baseline_median_over_each_model_median(tiny_folder, tmp_path, monkeypatch):
    """Fixed run times: the baseline's median is 4 ms, the others' 2 ms and 8 ms, so their speedups are 2 and 0.5."""
    models = [tmp_path / f"{name}.onnx" for name in ("base", "fast", "slow")]
    for path in models:
        shutil.copy(tiny_folder / "model.onnx", path)
    milliseconds = ([3, 4, 9], [1, 2, 3], [8, 8, 8])

    def fake(sessions, inputs, batch, warmup, runs):
        assert len(sessions) == len(inputs) == 3
        return [Timing([ms / 1e3 for ms in times], batch) for times in milliseconds]

    monkeypatch.setattr(deployment, "interleaved", fake)
    settings = deployment.Settings(["cpu"], [4], [8], threads=[1], runs=3, memory=False)
    rows = deployment.run_bench(models, settings).rows
    assert [row["model"] for row in rows] == ["base.onnx", "fast.onnx", "slow.onnx"]
    assert [row["p50_ms"] for row in rows] == [4.0, 2.0, 8.0]
    assert [row["speedup"] for row in rows] == [1.0, 2.0, 0.5]
    assert rows[0]["throughput"] == pytest.approx(4 * 3 / 0.016, rel=1e-3)


def _missing_provider() -> str:
    """A provider this ONNX Runtime build does not have: asking for it makes ONNX Runtime fall back to the CPU."""
    available = ort.get_available_providers()
    return next(name for name, provider in PROVIDERS.items() if provider not in available)


def test_a_session_that_fell_back_to_the_cpu_is_an_error(tiny_folder):
    provider = _missing_provider()
    with pytest.raises(BenchError, match=f"provider {provider} did not start .*fell back to CPUExecutionProvider"):
        open_session(tiny_folder / "model.onnx", provider, 1)


def test_bench_gives_no_row_for_a_provider_that_fell_back(tiny_folder, monkeypatch):
    """The build claims the provider (as a CUDA build without a driver does); the session still runs on the CPU."""
    provider = _missing_provider()
    monkeypatch.setattr(deployment, "unavailable", lambda name: None)
    settings = deployment.Settings([provider], [1], [8], threads=[1], runs=1, memory=False)
    with pytest.raises(BenchError, match=f"provider {provider} did not start"):
        deployment.run_bench([tiny_folder / "model.onnx"], settings)
