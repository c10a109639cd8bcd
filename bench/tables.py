"""`compress bench` results as a terminal table, Markdown and JSON."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from bench.deployment import BenchResult
from bench.machine import header_line

COLUMNS = (
    ("model", "model", "{}"),
    ("phase", "phase", "{}"),
    ("provider", "provider", "{}"),
    ("threads", "threads", "{}"),
    ("batch", "batch", "{}"),
    ("seq", "seq", "{}"),
    ("new_tokens", "new tokens", "{}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p90_ms", "p90 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("min_ms", "min ms", "{:.2f}"),
    ("max_ms", "max ms", "{:.2f}"),
    ("std_ms", "std ms", "{:.2f}"),
    ("spread", "spread", "{:.0%}"),
    ("throughput", "seq/s", "{:.1f}"),
    ("tokens_per_s", "tok/s", "{:.1f}"),
    ("ttft_ms", "TTFT ms", "{:.2f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("cold_start_ms", "cold start ms", "{:.0f}"),
    ("first_run_ms", "first run ms", "{:.1f}"),
    ("peak_memory_mb", "peak RSS MB", "{:.0f}"),
    ("file_mb", "file MB", "{:.1f}"),
    ("parameters", "params", "{:,}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("f1", "F1", "{:.4f}"),
    ("pearson", "pearson", "{:.4f}"),
    ("spearman", "spearman", "{:.4f}"),
)


TERMINAL_LEAVES_OUT = ("min_ms", "max_ms", "std_ms")  # in --markdown and --json; the terminal has no room


def _present(result: BenchResult, leave_out: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if c[0] not in leave_out and any(row.get(c[0]) is not None for row in result.rows)]


def _cells(row: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    return ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in columns]


def _caption(result: BenchResult) -> str:
    settings = result.settings
    return (
        f"{header_line(result.machine)}; intra-op threads 0 = ONNX Runtime's default; {settings.warmup} warm-up and "
        f"{settings.runs} timed runs per model, interleaved; speedup: baseline p50 / p50 (baseline: the first model); "
        "spread: (p90 - p10) / p50 of the row's own runs (a speedup within the baseline's spread is noise); cold start "
        "(model read + session creation), first run and peak RSS: a fresh process per row"
        + (_DECODE_NOTE if any(row.get("phase") == "decode" for row in result.rows) else "")
    )


_DECODE_NOTE = (
    "; decoders: prefill rows time the prompts (batch x seq tokens, empty KV cache), decode rows a greedy generation "
    "of 'new tokens' with the cache fed back: p50..max ms per decoding step (one token per sequence), TTFT = the "
    "prefill and its token, tok/s = batch x (new tokens - 1) / decoding time, speedup = baseline step p50 / step p50"
)


def _details(result: BenchResult) -> list[str]:
    """What each provider ran with, and the onnxruntime_perf_test command line of every distinct row."""
    lines = [f"- {provider} options: {options or 'none'}" for provider, options in result.provider_options.items()]
    commands = list(dict.fromkeys(row["perf_test"] for row in result.rows if row.get("perf_test")))
    return lines + ["", "The same settings with ONNX Runtime's own tool:", "", "```", *commands, "```"]


def print_table(result: BenchResult) -> None:
    console = Console(file=sys.stdout, width=200)
    columns = _present(result, TERMINAL_LEAVES_OUT)
    table = Table(caption=_caption(result))
    for _, title, _ in columns:
        table.add_column(title)
    for row in result.rows:
        table.add_row(*_cells(row, columns))
    console.print(table)
    for reason in result.skipped:
        console.print(f"skipped: {reason}", markup=False, highlight=False)


def markdown(result: BenchResult) -> str:
    columns = _present(result)
    lines = [
        _caption(result),
        "",
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cells(row, columns)) + " |" for row in result.rows),
        "",
        *_details(result),
    ]
    lines += [f"\nSkipped: {reason}" for reason in result.skipped]
    return "\n".join(lines) + "\n"


def as_json(result: BenchResult) -> str:
    return json.dumps(result.as_dict(), indent=1) + "\n"
