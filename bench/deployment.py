"""`compress bench`: latency, throughput, cold start, memory, size and (optionally) accuracy of models, side by side.

For every execution provider, thread count, batch size and sequence length, the models are timed interleaved; the
first model is the baseline and every row carries its speedup over it (median against median, measured in the same
rounds) beside its own run-to-run spread. Cold start, first inference and peak memory come from a fresh process per
row. Every row also carries the `onnxruntime_perf_test` command line that measures the same setting with ONNX
Runtime's own tool.

Decoders (`bench.decoding`) get two rows per model and setting: "prefill" (the batch of prompts of `seq` tokens with
empty caches, timed as an encoder's run) and "decode" (greedy generation of `new_tokens` with the KV cache fed back:
per-step latency, time to first token, tokens/s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import decoding
from bench.errors import BenchError
from bench.fresh_process import fresh_process
from bench.machine import describe
from bench.providers import PROVIDERS, open_session, unavailable
from bench.workload import feeds, file_bytes, load_graph, parameter_count
from compressor.timing import Timing, interleaved
from user_errors import first_line


@dataclass(frozen=True)
class Settings:
    providers: list[str]
    batches: list[int]
    seqs: list[int]
    threads: list[int] = field(default_factory=lambda: [0])  # intra-op threads to sweep; 0: ONNX Runtime's default
    warmup: int = 3
    runs: int = 20
    memory: bool = True  # cold start, first inference and peak RSS of a fresh process per row (a second or so each)
    new_tokens: int = 32  # decoders: tokens generated per sequence in the decode rows


@dataclass
class BenchResult:
    machine: dict
    settings: Settings
    rows: list[dict]
    skipped: list[str] = field(default_factory=list)  # why a requested provider was not measured
    provider_options: dict[str, dict] = field(default_factory=dict)  # what each provider ran with, as ORT reports it

    def as_dict(self) -> dict:
        return {
            "machine": self.machine,
            "settings": vars(self.settings),
            "provider_options": self.provider_options,
            "skipped": self.skipped,
            "rows": self.rows,
        }


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
    signatures = [decoding.signature(g) for g in graphs]
    decoders = [s is not None for s in signatures]
    if any(decoders) and not all(decoders):
        first = names[decoders.index(not decoders[0])]
        raise BenchError(
            f"{first} is {'a decoder' if not decoders[0] else 'not a decoder'} and {names[0]} is not; "
            "bench compares models of one kind (encoders, or decoders with a KV cache)"
        )
    reasons = {p: unavailable(p) for p in settings.providers}
    skipped = [reason for reason in reasons.values() if reason]
    providers = [p for p, reason in reasons.items() if not reason]
    if not providers:
        raise BenchError(skipped[0])
    rows: list[dict] = []
    options: dict[str, dict] = {}
    for provider in providers:
        for threads in settings.threads:
            sessions = [open_session(m, provider, threads) for m in models]
            options[provider] = sessions[0].get_provider_options().get(PROVIDERS[provider], {})
            for batch in settings.batches:
                for seq in settings.seqs:
                    where = {"provider": provider, "threads": threads, "batch": batch, "seq": seq}
                    inputs = [feeds(g, batch, seq) for g in graphs]
                    timings = _timed(sessions, inputs, batch, seq, settings)
                    phase = {"phase": "prefill"} if decoders[0] else {}
                    for index, timing in enumerate(timings):
                        cold = fresh_process(models[index], provider, threads, batch, seq) if settings.memory else {}
                        extra = {k: v for k, v in ((accuracy or {}).get(models[index]) or {}).items() if v is not None}
                        rows.append(
                            {
                                "model": names[index],
                                "path": str(models[index]),
                                **phase,
                                **where,
                                **_measured(timing, timings[0]),
                                **cold,
                                **facts[index],
                                **extra,
                                "perf_test": perf_test_command(models[index], graphs[index], where, settings),
                            }
                        )
                    if decoders[0]:
                        rows += _decode_rows(models, names, sessions, signatures, inputs, where, facts, settings)
    return BenchResult(describe(), settings, rows, skipped, options)


def _decode_rows(models, names, sessions, signatures, inputs, where: dict, facts, settings: Settings) -> list[dict]:
    try:
        generations = decoding.interleaved_generation(
            sessions, signatures, inputs, settings.new_tokens, settings.warmup, settings.runs
        )
    except Exception as exc:  # ORT raises several types for one cause: a model that cannot run these inputs
        first = first_line(exc)[:300]
        raise BenchError(
            f"a model fails generating at batch {where['batch']}, prompt {where['seq']} ({first}); check --batch, "
            "--seq and --new-tokens against its maximum length"
        ) from exc
    return [
        {
            "model": names[index],
            "path": str(models[index]),
            "phase": "decode",
            **where,
            "new_tokens": settings.new_tokens,
            **decoding.decode_measures(generation, generations[0]),
            **facts[index],
            "perf_test": None,  # onnxruntime_perf_test runs one graph call; it cannot feed a cache back
        }
        for index, generation in enumerate(generations)
    ]


def perf_test_command(model: Path, graph, where: dict, settings: Settings) -> str:
    """The `onnxruntime_perf_test` command line for the same model, provider, threads, shapes and run count: ORT's
    own random inputs (-I), free dimensions set by name (-f), no spinning between runs (as here), statistics (-s)."""
    sizes = {}
    for value in graph.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name.startswith("past_key_values") and len(dims) == 4 and dims[2].dim_param:
            sizes.setdefault(dims[2].dim_param, 0)  # a decoder's prefill: empty caches
        for axis, dim in enumerate(dims[:2]):
            if dim.dim_param:
                sizes.setdefault(dim.dim_param, (where["batch"], where["seq"])[axis])
    free = " ".join(f'-f "{name}:{size}"' for name, size in sizes.items())
    return (
        f"onnxruntime_perf_test -e {where['provider']} -m times -r {settings.runs} -x {where['threads']} -I {free} "
        f'-C "session.intra_op.allow_spinning|0" -s {model}'
    ).replace("  ", " ")


def _timed(sessions, inputs, batch: int, seq: int, settings: Settings) -> list[Timing]:
    try:
        return interleaved(sessions, inputs, batch, settings.warmup, settings.runs)
    except Exception as exc:  # ORT raises several types for one cause: a model that cannot run these inputs
        first = first_line(exc)[:300]
        raise BenchError(f"a model fails at batch {batch}, sequence {seq} ({first}); check --batch and --seq") from exc


def _measured(timing: Timing, baseline: Timing) -> dict:
    return {
        "p50_ms": round(timing.percentile(50) * 1e3, 3),
        "p90_ms": round(timing.percentile(90) * 1e3, 3),
        "p99_ms": round(timing.percentile(99) * 1e3, 3),
        "min_ms": round(min(timing.seconds) * 1e3, 3),
        "max_ms": round(max(timing.seconds) * 1e3, 3),
        "std_ms": round(float(np.std(timing.seconds)) * 1e3, 3),
        "spread": round(timing.spread, 3),
        "throughput": round(timing.throughput, 2),
        "speedup": round(baseline.percentile(50) / timing.percentile(50), 3),
    }
