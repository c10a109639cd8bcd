"""`compress bench`: latency, throughput, memory, size and (optionally) accuracy of models, side by side.

For every execution provider, batch size and sequence length, the models are timed interleaved; the first model is
the baseline and every row carries its speedup over it (median against median, measured in the same rounds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.machine import describe
from bench.peak_memory import peak_memory_mb
from bench.providers import open_session, unavailable
from bench.workload import feeds, file_bytes, load_graph, parameter_count
from compressor.timing import Timing, interleaved
from user_errors import first_line


@dataclass(frozen=True)
class Settings:
    providers: list[str]
    batches: list[int]
    seqs: list[int]
    threads: int = 0  # intra-op threads; 0: ONNX Runtime's default
    warmup: int = 3
    runs: int = 20
    memory: bool = True  # peak RSS of a fresh process per row (a few seconds each)


@dataclass
class BenchResult:
    machine: dict
    settings: Settings
    rows: list[dict]
    skipped: list[str] = field(default_factory=list)  # why a requested provider was not measured

    def as_dict(self) -> dict:
        return {"machine": self.machine, "settings": vars(self.settings), "skipped": self.skipped, "rows": self.rows}


def labels(models: list[Path]) -> list[str]:
    """Short unique names: file names when they differ, else folder/file."""
    names = [m.name for m in models]
    if len(set(names)) < len(names):
        names = [f"{m.parent.name}/{m.name}" for m in models]
    return names if len(set(names)) == len(names) else [str(m) for m in models]


def run_bench(models: list[Path], settings: Settings, accuracy: dict[Path, dict] | None = None) -> BenchResult:
    graphs = [load_graph(m) for m in models]
    facts = [
        {"file_mb": round(file_bytes(m, g) / 1e6, 2), "parameters": parameter_count(g)} for m, g in zip(models, graphs)
    ]
    names = labels(models)
    reasons = {p: unavailable(p) for p in settings.providers}
    skipped = [reason for reason in reasons.values() if reason]
    providers = [p for p, reason in reasons.items() if not reason]
    if not providers:
        raise BenchError(skipped[0])
    rows = []
    for provider in providers:
        sessions = [open_session(m, provider, settings.threads) for m in models]
        for batch in settings.batches:
            for seq in settings.seqs:
                inputs = [feeds(g, batch, seq) for g in graphs]
                timings = _timed(models, sessions, inputs, batch, seq, settings)
                for index, timing in enumerate(timings):
                    memory = (
                        round(peak_memory_mb(models[index], provider, settings.threads, batch, seq))
                        if settings.memory
                        else None
                    )
                    measured = _measured(timing, timings[0], memory)
                    extra = {k: v for k, v in ((accuracy or {}).get(models[index]) or {}).items() if v is not None}
                    where = {"provider": provider, "batch": batch, "seq": seq, "threads": settings.threads}
                    rows.append(
                        {
                            "model": names[index],
                            "path": str(models[index]),
                            **where,
                            **measured,
                            **facts[index],
                            **extra,
                        }
                    )
    return BenchResult(describe(), settings, rows, skipped)


def _timed(models, sessions, inputs, batch: int, seq: int, settings: Settings) -> list[Timing]:
    try:
        return interleaved(sessions, inputs, batch, settings.warmup, settings.runs)
    except Exception as exc:  # ORT raises several types for one cause: a model that cannot run these inputs
        first = first_line(exc)[:300]
        raise BenchError(f"a model fails at batch {batch}, sequence {seq} ({first}); check --batch and --seq") from exc


def _measured(timing: Timing, baseline: Timing, memory: float | None) -> dict:
    return {
        "p50_ms": round(timing.percentile(50) * 1e3, 3),
        "p90_ms": round(timing.percentile(90) * 1e3, 3),
        "p99_ms": round(timing.percentile(99) * 1e3, 3),
        "throughput": round(timing.throughput, 2),
        "speedup": round(baseline.percentile(50) / timing.percentile(50), 3),
        "peak_memory_mb": memory,
    }
