"""glibc is told to map large allocations (`map_large_allocations`): a freed large array leaves the process, where
glibc would otherwise have raised its threshold past it and kept the block in its heap."""

from __future__ import annotations

import os

import numpy as np

from graph_passes.sessions import MAPPED_BYTES, map_large_allocations


def _resident_bytes() -> int:
    with open("/proc/self/statm") as stat:
        return int(stat.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_freed_large_array_leaves_the_process():
    np.ones(3 * 2**20).sum()  # a 24 MiB block freed: glibc raises its own threshold to 24 MiB
    map_large_allocations()
    array = np.ones(2 * MAPPED_BYTES // 8)  # 16 MiB, under the cap
    held = _resident_bytes()
    del array
    assert held - _resident_bytes() >= MAPPED_BYTES
