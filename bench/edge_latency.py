"""The edge-latency table of BENCHMARKS.md: what one process on a small CPU pays for the original, `compress --keep
0.4` and `compress --keep 0.4 --quantize int8`, as edge latency tools report it (cold start, first inference,
p50/p99, peak memory, run-to-run spread), at batch 1, sequence 128, with 1 and 2 intra-op threads."""

from __future__ import annotations

from pathlib import Path

import onnx

from bench.deployment import Settings, run_bench
from compressor import compress

KEEP = 0.4
THREADS = (1, 2)
SEQ = 128


def edge_models(model_dir: Path, calib: Path, samples: int, saved: Path) -> list[tuple[str, Path]]:
    """(name, path) of the three models, the compressed ones written to `saved`."""
    models = [("original", model_dir / "model.onnx")]
    for name, quantize in ((f"compress --keep {KEEP}", None), (f"compress --keep {KEEP} --quantize int8", "int8")):
        path = saved / f"edge-{'int8' if quantize else 'float'}.onnx"
        result = compress(model_dir / "model.onnx", calib, keep=KEEP, samples=samples, quantize=quantize)
        onnx.save(result.model, str(path))
        models.append((name, path))
    return models


def edge_rows(models: list[tuple[str, Path]], runs: int, seq: int = SEQ) -> list[dict]:
    """`compress bench` rows of the three models, interleaved, with a fresh process per row for the cold figures."""
    settings = Settings(["cpu"], [1], [seq], list(THREADS), warmup=3, runs=runs, memory=True)
    result = run_bench([path for _, path in models], settings)
    names = {str(path): name for name, path in models}
    keys = ("threads", "cold_start_ms", "first_run_ms", "p50_ms", "p99_ms", "spread", "speedup", "peak_memory_mb")
    return [
        {"model": names[row["path"]], **{k: row[k] for k in keys}, "file_mb": row["file_mb"]} for row in result.rows
    ]


def edge_markdown(rows: list[dict], runs: int) -> list[str]:
    lines = [
        "## Edge latency: cold start, first inference, steady state (CPU, batch 1)",
        "",
        f"`compress bench --batch 1 --seq {SEQ} --threads {','.join(map(str, THREADS))} --runs {runs}` on the original, "
        f"`compress --keep {KEEP}` and `compress --keep {KEEP} --quantize int8`. Cold start: reading the model and "
        "creating the session in a fresh process (page-cached file); first run: that process's first inference; "
        "peak RSS: the same process's high-water mark. p50/p99 and spread ((p90 - p10) / p50) from the interleaved "
        "runs of one process. A speedup within the original's spread is noise.",
        "",
        "| model | threads | cold start ms | first run ms | p50 ms | p99 ms | spread | speedup | peak RSS MB | file MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['threads']} | {row['cold_start_ms']:.0f} | {row['first_run_ms']:.1f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['spread']:.0%} | {row['speedup']:.2f}x | "
            f"{row['peak_memory_mb']:.0f} | {row['file_mb']} |"
        )
    return lines + [""]
