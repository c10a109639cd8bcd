"""The decoder section of BENCHMARKS.md: perplexity of the real stories260k (../shared/models/stories260k) after
`compress` with every method at keep 0.8 / 0.6 / 0.4, recovery on and off, against the original.

Calibration: the first half of the TinyStories validation stories (by `<|endoftext|>`), 128 sequences of 256 tokens;
perplexity on the second half (non-overlapping windows of 256, `compress eval`'s recipe), and for the default method
on WikiText-2 validation (out of domain)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from compressor import compress
from compressor.evaluation import evaluate_file
from compressor.scoring import METHODS
from graph_passes import load_model

KEEPS = (0.8, 0.6, 0.4)
WINDOW = 256
SAMPLES = 128
SEPARATOR = "<|endoftext|>"


def halves(stories: Path, folder: Path) -> tuple[Path, Path]:
    """The first and the second half of the stories, as two text files in `folder`."""
    parts = [p for p in stories.read_text(encoding="utf-8").split(SEPARATOR) if p.strip()]
    middle = len(parts) // 2
    files = (folder / "calibration.txt", folder / "evaluation.txt")
    for path, chosen in zip(files, (parts[:middle], parts[middle:]), strict=True):
        path.write_text(f"\n{SEPARATOR}\n".join(chosen), encoding="utf-8")
    return files


def _perplexity(model: onnx.ModelProto, text: Path, tokenizer: Path) -> float:
    return round(evaluate_file(model, text, tokenizer, None, None, WINDOW)["perplexity"], 3)


def decoder_rows(model_dir: Path, stories: Path, wikitext: Path) -> list[dict]:
    """One row per (method, keep, recovery), plus the original; wikitext only for the original and `mi`."""
    with tempfile.TemporaryDirectory(prefix="mi-decoder-") as folder:
        calibration, evaluation = halves(stories, Path(folder))
        wikitext_text = Path(folder) / "wikitext.txt"  # .raw is plain text; compress reads text as .txt
        wikitext_text.write_bytes(wikitext.read_bytes())
        wikitext = wikitext_text
        original = load_model(model_dir / "model.onnx")
        rows = [
            {
                "method": "original",
                "keep": 1.0,
                "recovery": "-",
                "perplexity": _perplexity(original, evaluation, model_dir),
                "wikitext": _perplexity(original, wikitext, model_dir),
            }
        ]
        for keep in KEEPS:
            for method in METHODS:
                for recover in (True, False):
                    result = compress(
                        original, calibration, keep=keep, method=method, samples=SAMPLES, max_length=WINDOW,
                        tokenizer=model_dir, recover=recover,
                    )  # fmt: skip
                    row = {
                        "method": method,
                        "keep": keep,
                        "recovery": "on" if recover else "off",
                        "kept": result.report["keep_achieved"],
                        "perplexity": _perplexity(result.model, evaluation, model_dir),
                    }
                    if method == "mi" and recover:
                        row["wikitext"] = _perplexity(result.model, wikitext, model_dir)
                    rows.append(row)
    return rows


def decoder_markdown(rows: list[dict]) -> list[str]:
    base = rows[0]
    lines = [
        "## Decoder: stories260k perplexity after compress",
        "",
        f"`../shared/models/stories260k` (Llama: 5 layers, 8 query heads over 4 KV heads, SwiGLU 172). Calibration: "
        f"the first half of `tinystories/valid-head.txt`, {SAMPLES} sequences of {WINDOW} tokens; perplexity on the "
        f"second half (non-overlapping windows of {WINDOW}); WikiText-2 validation for the original and `mi`. "
        "Issue 12's targets: keep 0.8 at most 1.4x the original, keep 0.6 at most 2.5x, `mi` at or below every "
        "baseline. A unit of attention is a KV head with its two query heads, so heads move in steps of a quarter.",
        "",
        f"Original: perplexity {base['perplexity']} (TinyStories second half), {base['wikitext']} (WikiText-2).",
        "",
        "| keep | method | recovery | kept | perplexity | x original | WikiText-2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows[1:]:
        ratio = row["perplexity"] / base["perplexity"]
        wiki = row.get("wikitext", "-")
        lines.append(
            f"| {row['keep']} | {row['method']} | {row['recovery']} | {row['kept']:.3f} | {row['perplexity']} | "
            f"{ratio:.2f}x | {wiki} |"
        )
    return lines + [""]
