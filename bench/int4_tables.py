"""The int4 section of BENCHMARKS.md: perplexity of the real stories260k (../shared/models/stories260k, optimum export)
pruned by `compress` at keep 0.8 / 0.6, in float and then quantized to int4 (`compress --quantize int4`: ONNX
Runtime's MatMulNBits, blocks of 32, symmetric, accuracy level 4), beside int4 alone (the original quantized the
same way). Calibration and evaluation as the decoder section (`bench.decoder_tables`): first and second half of the
TinyStories validation stories, windows of 256 tokens."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from bench.decoder_tables import SAMPLES, WINDOW, _perplexity, halves
from compressor import compress
from compressor.quantization import INT4_ACCURACY_LEVEL, INT4_BLOCK, quantize_int4
from graph_passes import load_model

KEEPS = (0.8, 0.6)


def int4_rows(model_dir: Path, stories: Path) -> list[dict]:
    """Rows of (keep, precision, perplexity, file bytes): the original, then each keep in float and in int4."""
    with tempfile.TemporaryDirectory(prefix="mi-int4-") as folder:
        calibration, evaluation = halves(stories, Path(folder))
        original = load_model(model_dir / "model.onnx")
        rows = []
        for keep in (1.0, *KEEPS):
            model, kept = original, 1.0
            if keep < 1:
                result = compress(
                    original, calibration, keep=keep, samples=SAMPLES, max_length=WINDOW, tokenizer=model_dir
                )
                model, kept = result.model, result.report["keep_achieved"]
            for precision, variant in (("fp32", model), ("int4", quantize_int4(model))):
                rows.append(
                    {
                        "keep": keep,
                        "kept": kept,
                        "precision": precision,
                        "perplexity": _perplexity(variant, evaluation, model_dir),
                        "bytes": variant.ByteSize(),
                    }
                )
    return rows


def measured_at() -> str:
    """The commit the numbers are measured at, marked when the package's files differ from it (work in progress)."""
    here = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "compressor", "graph_passes"],
        capture_output=True,
        text=True,
        cwd=here,
        check=False,
    )
    commit = head.stdout.strip() or "unknown"
    return f"{commit} (with uncommitted changes)" if dirty.stdout.strip() else commit


def int4_markdown(rows: list[dict], measured_at: str) -> list[str]:
    base = rows[0]
    lines = [
        "## Decoder: pruning then int4 (stories260k perplexity)",
        "",
        (
            f"`../shared/models/stories260k` (optimum export), `compress` with the default method and recovery, then "
            f"`--quantize int4` (ONNX Runtime `MatMulNBitsQuantizer`: blocks of {INT4_BLOCK} along K, symmetric, "
            f"accuracy level {INT4_ACCURACY_LEVEL}, every MatMul weight including lm_head; the embedding Gather "
            f"stays float). Calibration and perplexity as the decoder section above ({SAMPLES} sequences of {WINDOW} "
            f"tokens from the first half of `tinystories/valid-head.txt`, perplexity on the second half). Measured "
            f"at commit {measured_at}; the decoder scoring is still changing, so the pruned rows move with it."
        ),
        "",
        "| keep | kept | weights | perplexity | x original fp32 | x same keep fp32 | model bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    float_by_keep = {r["keep"]: r["perplexity"] for r in rows if r["precision"] == "fp32"}
    for row in rows:
        lines.append(
            f"| {row['keep']} | {row['kept']:.3f} | {row['precision']} | {row['perplexity']} | "
            f"{row['perplexity'] / base['perplexity']:.2f}x | {row['perplexity'] / float_by_keep[row['keep']]:.2f}x | "
            f"{row['bytes']:,} |"
        )
    return lines + [""]
