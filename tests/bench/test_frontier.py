"""The encoder-frontier section renders means over the draws and says which targets are met."""

from __future__ import annotations

from bench.frontier import frontier_markdown

HEADS, FFN = [3, 6, 6, 6, 2, 3], [321, 567, 554, 373, 169, 499]


def _row(keep, method, seed, accuracy, granularity="heads,ffn"):
    return {"granularity": granularity, "keep": keep, "method": method, "seed": seed, "accuracy": accuracy,
            "allocation": "global" if method == "mi" else "uniform", "heads": HEADS, "ffn": FFN, "seconds": 1.0}  # fmt: skip


def test_means_targets_and_hidden_rows():
    rows = [_row(0.3, "mi", s, a) for s, a in enumerate((0.86, 0.87, 0.85))]
    rows += [_row(0.3, "wanda", s, 0.83) for s in range(3)]
    rows += [_row(0.2, "mi", 0, 0.85)]  # one draw only: the target cannot be called met
    rows += [_row(0.4, "mi", 0, 0.84, "heads,ffn,hidden")]
    text = "\n".join(frontier_markdown(rows, 0.8704))
    assert "| 0.3 | mi | 0.8600 | 0.8700 | 0.8500 | 0.8600 | 0.860 | yes |" in text
    assert "| 0.3 | wanda | 0.8300 | 0.8300 | 0.8300 | 0.8300 | 0.860 | **no** |" in text
    assert "| 0.2 | mi | 0.8500 | - | - | 0.8500 | 0.845 | **no** |" in text
    assert "| 0.4 | `heads,ffn,hidden` | 0.8400 | - |" in text
    assert "- keep 0.3: heads [3, 6, 6, 6, 2, 3], neurons [321, 567, 554, 373, 169, 499]" in text
