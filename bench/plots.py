"""The figures of BENCHMARKS.md: accuracy against CPU speedup (batch 1 and 32) and against file size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _families(points: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for point in points:
        found.setdefault(point["family"], []).append(point)
    return found


MARKERS = "os^vD<>ph*"


def _scatter(axis, points: list[dict], x: str, label_keep: bool) -> None:
    colors = plt.cm.tab20.colors
    for index, (family, members) in enumerate(_families(points).items()):
        members = sorted(members, key=lambda p: -(p["keep"] or 1.0))
        color = colors[(2 * index) % len(colors) + (2 * index) // len(colors)]  # dark shades first, then light
        style = {"marker": MARKERS[index % len(MARKERS)], "color": color}
        axis.plot([p[x] for p in members], [p["accuracy"] for p in members], label=family, **style)
        for p in members if label_keep else ():
            if p["keep"] is not None:
                axis.annotate(
                    f"{p['keep']}", (p[x], p["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )


def speed_figure(points: list[dict], seq: int, path: Path) -> None:
    """One panel per batch size: dev accuracy (y) against speedup over the original (x); labels are keeps."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for axis, batch in zip(axes, (1, 32)):
        _scatter(axis, [{**p, "speedup": p[f"speedup_b{batch}"]} for p in points], "speedup", True)
        axis.set_xlabel(f"speedup over the original, CPU, batch {batch}, sequence {seq}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("dev accuracy")
    axes[1].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def size_figure(points: list[dict], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 5))
    _scatter(axis, points, "file_mb", True)
    axis.set_xlabel("file size, MB")
    axis.set_ylabel("dev accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
