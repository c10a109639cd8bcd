"""Peak resident memory of a process that loads one model and runs it: `python -m bench.peak_memory MODEL PROVIDER
THREADS BATCH SEQ RUNS` prints megabytes.

Run as a fresh process so that no other model, and no memory of the caller, counts. Read from /proc/self/status
(VmHWM), which starts anew at exec; getrusage's ru_maxrss would carry the parent's peak over on Linux.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from bench.providers import open_session
from bench.workload import feeds, load_graph


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
