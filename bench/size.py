"""What `compress` costs as models grow: wall time and peak resident memory of one `compress` command on BERT-shaped
encoders with random weights (`bench.large_models`), against the size of their weights, with the peak reached by the
end of each stage (the report's `peak_rss_gb`).

    python -m bench.size                       # every shape in SHAPES, rows as JSON
    python -m bench.size --shapes bert-base    # one

The section of BENCHMARKS.md (`python -m bench.compare ... --only size`) is written from these rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.large_models import Shape, build

SHAPES = {
    "bert-mini": Shape(layers=4, hidden=256, heads=4, ffn=1024),
    "bert-small": Shape(layers=4, hidden=512, heads=8, ffn=2048),
    "bert-base": Shape(layers=12, hidden=768, heads=12, ffn=3072),
    "bert-large": Shape(layers=24, hidden=1024, heads=16, ffn=4096),
    "2.9 GB": Shape(layers=24, hidden=1600, heads=25, ffn=6400),
}
KEEP, SAMPLES, LENGTH = 0.5, 32, 32


def measure(name: str, shape: Shape, folder: Path) -> dict:
    """Build the model in `folder`, compress it in a fresh process; its wall time, peak RSS and per-stage peaks."""
    model = build(shape, folder / "model.onnx")
    weights = sum(p.stat().st_size for p in folder.iterdir())
    out, report = folder / "small.onnx", folder / "report.json"
    command = [
        sys.executable, "-m", "command_line", str(model), "--keep", str(KEEP), "--samples", str(SAMPLES),
        "--max-length", str(LENGTH), "--out", str(out), "--report", str(report), "--quiet", "--method", "mi",
    ]  # fmt: skip
    start = time.perf_counter()
    with open(folder / "stderr.txt", "wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{name}: {(folder / 'stderr.txt').read_text().strip().splitlines()[-1]}")
    found = json.loads(report.read_text())
    peak = usage.ru_maxrss / 2**20  # KiB on Linux
    return {
        "name": name,
        "shape": vars(shape),
        "parameters": shape.parameters,
        "weights_gb": round(weights / 2**30, 3),
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak, 2),
        "peak_over_weights": round(peak / (weights / 2**30), 2),
        "stage_seconds": found["seconds"],
        "peak_rss_gb_after_stage": found["peak_rss_gb"]["after_stage"],
    }


def size_rows(names: list[str], note: str = "") -> list[dict]:
    """One row per shape; `note` says what else the machine was doing (the timings depend on it)."""
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="mi-size-") as folder:
            rows.append({**measure(name, SHAPES[name], Path(folder)), "note": note})
    return rows


def size_markdown(rows: list[dict]) -> list[str]:
    missing = [name for name in SHAPES if name not in {row["name"] for row in rows}]
    lines = [
        "## Model size: time and memory of `compress`",
        "",
        (
            "`python -m bench.size` (`--only size`): BERT-shaped encoders with random weights built by "
            f"`bench.large_models` (external data), `compress --keep {KEEP} --method mi --samples {SAMPLES} "
            f"--max-length {LENGTH}` (inputs from the graph), one fresh process each; peak RSS of the process "
            "(`wait4`), and by the end of each stage (the report's `peak_rss_gb`)."
        ),
        "",
        "| model | parameters | weights GB | wall s | peak RSS GB | peak / weights | by stage: analyze / capture / "
        + "recovery / fidelity |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        stages = row["peak_rss_gb_after_stage"]
        by_stage = " / ".join(f"{stages.get(s, 0):.2f}" for s in ("analyze", "capture", "recovery", "fidelity"))
        lines.append(
            f"| {row['name']} | {row['parameters'] / 1e6:.0f} M | {row['weights_gb']:.2f} | {row['seconds']:.0f} | "
            f"{row['peak_rss_gb']:.2f} | {row['peak_over_weights']:.2f}x | {by_stage} |"
        )
    notes = list(dict.fromkeys(row["note"] for row in rows if row.get("note")))
    lines += [""] + [f"Machine: {note}" for note in notes] if notes else []
    if missing:
        lines += ["", f"Not measured in this run: {', '.join(missing)}."]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--note", default="", help="what else the machine runs meanwhile, printed under the table")
    args = parser.parse_args()
    rows = size_rows(args.shapes.split(","), args.note)
    print(json.dumps(rows, indent=1))
    print("\n".join(size_markdown(rows)))


if __name__ == "__main__":
    main()
