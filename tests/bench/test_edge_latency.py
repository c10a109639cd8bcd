"""The edge-latency section of BENCHMARKS.md on the tiny classifier: three models, two thread counts, a fresh
process per row, and the Markdown that shows them."""

from __future__ import annotations

from bench.edge_latency import KEEP, THREADS, edge_markdown, edge_models, edge_rows


def test_edge_rows_time_the_original_and_both_compressed_models(tiny_folder, tmp_path):
    models = edge_models(tiny_folder, tiny_folder / "calib.tsv", 64, tmp_path)
    assert [name for name, _ in models] == [
        "original",
        f"compress --keep {KEEP}",
        f"compress --keep {KEEP} --quantize int8",
    ]
    rows = edge_rows(models, runs=3, seq=32)  # the tiny model has 80 positions
    assert [(r["model"], r["threads"]) for r in rows] == [(name, t) for t in THREADS for name, _ in models]
    for row in rows:
        assert row["cold_start_ms"] > 0 and row["first_run_ms"] > 0 and row["peak_memory_mb"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["spread"] >= 0
    assert rows[0]["speedup"] == 1.0 and rows[2]["file_mb"] < rows[1]["file_mb"] < rows[0]["file_mb"]
    page = edge_markdown(rows, 3)
    notes = page.index("## Encoder speed at keep 0.4: int8 and batch 1 (issue 14)")  # hand-measured, kept after it
    table = page[:notes]
    assert table[0].startswith("## Edge latency") and len([line for line in table if line.startswith("| ")]) == 7
