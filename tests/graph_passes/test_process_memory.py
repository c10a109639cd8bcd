"""glibc is told to map large allocations (`map_large_allocations`): a freed large array leaves the process, where
glibc would otherwise have raised its threshold past it and kept the block in its heap. Measured in a fresh process:
in one whose heap already has room, glibc serves the array from that room whatever the threshold."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import os, sys
import numpy as np
from graph_passes.sessions import map_large_allocations

def resident():
    with open("/proc/self/statm") as stat:
        return int(stat.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

np.ones(3 * 2**20).sum()  # a 24 MiB block freed: glibc raises its own threshold to 24 MiB
if sys.argv[1] == "mapped":
    map_large_allocations()
array = np.ones(2**21)  # 16 MiB, under that threshold
held = resident()
del array
print(held - resident())
"""


def _released(mode: str) -> int:
    found = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(found.stdout)


def test_a_freed_large_array_leaves_the_process():
    assert _released("mapped") >= 2**24 - 2**16
    assert _released("default") < 2**20  # without it, the block stays in the heap
