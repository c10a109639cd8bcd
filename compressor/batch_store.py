"""Per-batch tensors that recovery keeps from one pass to the next (what the original computed at a layer, and each
model's input to the next layer), held in memory up to a budget and in files beyond it.

Layer-by-layer refits keep, for every calibration batch, the tensors the next layer needs: linear in the samples
(minilm-sst2 at keep 0.4: 1.14 GB at 512 samples, 1.89 GB at 5,000). Past `STORE_BYTES` they go to files in a
temporary folder and are read back when used, so memory stays flat however many samples calibrate; below it nothing
is written and nothing is slower.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

STORE_BYTES = 2**27  # 128 MiB of batches held in memory by one recovery, all its lists together

Value = np.ndarray | dict[str, np.ndarray]


class Spill:
    """The memory budget shared by the `Stored` lists of one recovery, and the folder that takes what exceeds it
    (removed with this object, also on error and at exit)."""

    def __init__(self, folder: Path | None = None, budget: int = STORE_BYTES) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="mi-compressor-batches-", dir=folder)
        self.budget = budget
        self.held = 0
        self._files = 0

    def stored(self) -> Stored:
        return Stored(self)

    def new_file(self, suffix: str) -> Path:
        self._files += 1
        return Path(self._folder.name) / f"{self._files}{suffix}"


class Stored(Sequence[Value]):
    """A list of per-batch values (arrays, or dicts of named arrays): in memory while its spill's budget lasts, else
    a file each, read back on every access. Its memory and files are released with it."""

    def __init__(self, spill: Spill) -> None:
        self._spill = spill
        self._items: list[Value | Path] = []
        self._held = 0

    def append(self, value: Value) -> None:
        size = _nbytes(value)
        if self._spill.held + size <= self._spill.budget:
            self._spill.held += size
            self._held += size
            self._items.append(value)
            return
        if isinstance(value, dict):
            np.savez(path := self._spill.new_file(".npz"), **value)
        else:
            np.save(path := self._spill.new_file(".npy"), value)
        self._items.append(path)

    def __getitem__(self, index: int) -> Value:  # type: ignore[override]
        item = self._items[index]
        if not isinstance(item, Path):
            return item
        if item.suffix == ".npy":
            return np.load(item)
        with np.load(item) as stored:
            return {name: stored[name] for name in stored.files}

    def __len__(self) -> int:
        return len(self._items)

    def __del__(self) -> None:
        self._spill.held -= self._held
        for item in self._items:
            if isinstance(item, Path):
                item.unlink(missing_ok=True)


def _nbytes(value: Value) -> int:
    return sum(a.nbytes for a in value.values()) if isinstance(value, dict) else value.nbytes
