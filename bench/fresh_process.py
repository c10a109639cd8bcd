"""What a fresh process pays for one model: cold start (reading the model and creating the session), the first
inference, and peak resident memory. `fresh_process` starts `python -m bench.fresh_process MODEL PROVIDER THREADS
BATCH SEQ RUNS`, which prints them as JSON.

A fresh process so that no other model, no warm file cache of a session and no memory of the caller counts (the
file itself may be in the operating system's page cache: this is a warm-disk cold start). Peak memory is read from
/proc/self/status (VmHWM), which starts anew at exec; getrusage's ru_maxrss would carry the parent's peak over on
Linux.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.errors import BenchError
from bench.providers import open_session
from bench.workload import feeds, load_graph


def fresh_process(model: Path, provider: str, threads: int, batch: int, seq: int, runs: int = 2) -> dict:
    """{"cold_start_ms", "first_run_ms", "peak_memory_mb"} of a new Python process that loads the model on
    `provider` and runs it `runs` times (its own imports are in the memory, not in the times)."""
    command = [
        sys.executable,
        "-m",
        "bench.fresh_process",
        str(model),
        provider,
        *map(str, (threads, batch, seq, runs)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr.strip() or "no output").splitlines()
        raise BenchError(f"measuring a fresh process of {model} on {provider} failed: {lines[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, kilobytes elsewhere


def main(arguments: list[str]) -> None:
    model, provider = Path(arguments[0]), arguments[1]
    threads, batch, seq, runs = (int(a) for a in arguments[2:6])
    feed = feeds(load_graph(model), batch, seq)
    start = time.perf_counter()
    session = open_session(model, provider, threads)
    loaded = time.perf_counter()
    session.run(None, feed)
    first = time.perf_counter()
    for _ in range(runs - 1):
        session.run(None, feed)
    measures = {
        "cold_start_ms": round((loaded - start) * 1e3, 2),
        "first_run_ms": round((first - loaded) * 1e3, 2),
        "peak_memory_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(measures))


if __name__ == "__main__":
    main(sys.argv[1:])
