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
    ("provider", "provider", "{}"),
    ("batch", "batch", "{}"),
    ("seq", "seq", "{}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p90_ms", "p90 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("throughput", "seq/s", "{:.1f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("peak_memory_mb", "peak RSS MB", "{}"),
    ("file_mb", "file MB", "{:.1f}"),
    ("parameters", "params", "{:,}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("f1", "F1", "{:.4f}"),
    ("pearson", "pearson", "{:.4f}"),
    ("spearman", "spearman", "{:.4f}"),
)


def _present(result: BenchResult) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(row.get(c[0]) is not None for row in result.rows)]


def _cells(row: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    return ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in columns]


def _caption(result: BenchResult) -> str:
    settings = result.settings
    threads = settings.threads or "ONNX Runtime default"
    return (
        f"{header_line(result.machine)}; intra-op threads: {threads}; {settings.warmup} warm-up and {settings.runs} "
        f"timed runs per model, interleaved; speedup: baseline p50 / p50 (baseline: the first model)"
    )


def print_table(result: BenchResult) -> None:
    console = Console(file=sys.stdout, width=200)
    columns = _present(result)
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
    ]
    lines += [f"\nSkipped: {reason}" for reason in result.skipped]
    return "\n".join(lines) + "\n"


def as_json(result: BenchResult) -> str:
    return json.dumps(result.as_dict(), indent=1) + "\n"
