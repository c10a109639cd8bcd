"""Peak resident memory of a process that loads one model and runs it: `peak_memory_mb` starts
`python -m bench.peak_memory MODEL PROVIDER THREADS BATCH SEQ RUNS`, which prints megabytes.

Run as a fresh process so that no other model, and no memory of the caller, counts. Read from /proc/self/status
(VmHWM), which starts anew at exec; getrusage's ru_maxrss would carry the parent's peak over on Linux.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.providers import open_session
from bench.workload import feeds, load_graph


def peak_memory_mb(model: Path, provider: str, threads: int, batch: int, seq: int, runs: int = 2) -> float:
    """Peak resident memory (MB) of a fresh Python process that loads the model on `provider` and runs it `runs`
    times (`python -m bench.peak_memory`; its own imports included)."""
    command = [sys.executable, "-m", "bench.peak_memory", str(model), provider, *map(str, (threads, batch, seq, runs))]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr.strip() or "no output").splitlines()
        raise BenchError(f"measuring the memory of {model} on {provider} failed: {lines[-1]}")
    return float(result.stdout.split()[-1])


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
    session = open_session(model, provider, threads)
    feed = feeds(load_graph(model), batch, seq)
    for _ in range(runs):
        session.run(None, feed)
    print(f"{peak_rss_mb():.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
