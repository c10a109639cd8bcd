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
    return lines + [""] + NOTES + [""]


NOTES = [
    "### Decoder notes: what was measured on the way (issue 12)",
    "",
    (
        "Measured with the protocol above (`mi`, recovery on unless said), one run each, on the working tree around "
        "commit 4e95b4a (the first four items) and b62dc50; perplexity on the TinyStories second half. Kept where "
        "it measured better, recorded here where it did not."
    ),
    "",
    (
        "- **Recovery against the original stream** (`--refit-inputs stream`, a decoder's default since 44a69f5; "
        "the table above uses it): each attention output and FFN down projection is refit on the pruned model's own "
        "inputs, layer by layer, to what the original stream would be after its residual add (the original "
        "projection's output plus the original stream minus the pruned one), so every refit also makes up for the "
        "layers below. Keep 0.8 / 0.6 / 0.4: 6.89 / 15.96 / 40.56, against 7.02 / 17.83 / 71.04 with the original "
        "inputs (the earlier default); `wanda` at keep 0.4 gets 43.13 from it (64.77 with original inputs), so `mi` "
        "stays below it. The older `pruned` inputs (target: the original projection's output only) measured 7.25 at "
        "keep 0.8 and at keep 0.6 made the output worse than the sliced model, so the refit was dropped (43.3). On "
        "minilm-sst2 (a post-norm encoder, whose stream is normalised right after each add) stream refits gave dev "
        "accuracy 0.8601 at keep 0.4 (`mi`), against 0.8647 with original inputs and 0.8532 with pruned inputs (the "
        "accuracy section); with the readers refit and `mi`'s units chosen again (below) stream refits became the "
        "encoder default too (the encoder frontier section)."
    ),
    (
        "- **Top signal through the final norm and `lm_head`** (not kept): the last layer's units scored by the "
        "variance they put into the logits (the final RMSNorm scale and `lm_head` as the readout) gave 7.16 / 18.23 "
        "at keep 0.8 / 0.6; weighted by the softmax's Fisher metric E[diag(p) - p pᵀ] (the expected KL of the "
        "next-token distribution) 7.05 / 18.69; the stream itself (the default) 7.02 / 17.83, all with "
        "original-input refits."
    ),
    (
        "- **Every layer scored by what it writes into the stream** (identity readout instead of the next layer's "
        "reads, not kept): 40.27 at keep 0.4 with stream refits against 40.56, within one run's noise."
    ),
    (
        "- **Attention against FFN** (the uniform budget's split kept): keep 0.8 with 2 KV heads and 156 neurons "
        "per layer 7.51, against 6.89 for the budget's 3 KV heads and 141 neurons; keep 0.6 with 3 KV heads and 93 "
        "neurons 17.53, against 15.96 for 2 and 110 (both with stream refits). FFN only at keep 0.8 (heads kept): "
        "7.82 against 7.02 (original-input refits)."
    ),
    (
        "- **Readers refit, and `mi`'s units chosen again on the pruned model** (b62dc50, the table above): stream "
        "refits also refit Q, K, V, gate and up from the stream the pruned model computes to what the original "
        "computed (6.82 / 15.13 at keep 0.8 / 0.6, from 6.89 / 15.96), and `mi` chooses each layer's KV heads and "
        "neurons again as recovery reaches the layer, among all of them as the pruned layers below compute them, by "
        "what a least-squares refit to the original stream loses (`scoring.RefitLoss`; alone 6.76 / 15.73 / 37.47 "
        "at keep 0.8 / 0.6 / 0.4). Both: 6.65 / 15.08 / 35.19. Eliminating one unit per round instead of eight "
        "rounds: 6.69 / 14.90, within noise of each other; eight rounds kept (they scale to 8,192 neurons)."
    ),
    (
        "- **Measured in a torch reimplementation of the same pruning** (a study script outside the product; its "
        "numbers reproduce the product's within 1%: 6.86 for the table's keep 0.8 masks with stream refits): a bias "
        "(intercept) on the refit attention output and down projections, which Llama's have none of, 14.75 against "
        "15.17 at keep 0.6 and 6.60 against 6.64 at keep 0.8 (not built: it adds an Add node after bias-free "
        "MatMuls, which fusion and the GenAI layout do not expect); query heads pruned within each KV group (the "
        "repeat factor 2 -> 1 in every layer, keeping 3 KV heads): 13.25 against 14.08 at keep 0.6 with 470 "
        "sequences, none at keep 0.8 (6.89 against 6.69, both without reader refits); more pruning in the lowest "
        "layer (FFN 116 / 142 / 145 / 148 / 154 neurons bottom up): 6.39 against 6.53 at keep 0.8; 470 calibration "
        "sequences instead of 128: 6.60 against 6.66. Halving one layer's FFN at a time (all else whole) raised the "
        "log-perplexity by 0.07 / 0.18 / 0.14 / 0.17 / 0.23 bottom up, halving its KV heads by 0.03 / 0.06 / 0.05 / "
        "0.05 / 0.08: the lowest layer is the cheapest to prune and the top one the dearest."
    ),
    (
        "- **After the product's pruning, on 2026-12-07** (its default at d05f45f; a script outside the product): "
        "`lm_head` refit by least squares to the original's logits (untied from the embedding, from the pruned "
        "model's final normed states on the calibration tokens): 6.555 against 6.65 at keep 0.8, the logits' mean "
        "squared error 2.61 to 2.10, so what the layers leave is not a linear error of the final stream; all 472 "
        "calibration sequences of the first half instead of 128: 6.674 / 14.36 at keep 0.8 / 0.6 against 6.65 / "
        "15.08, so the refits do not lack data."
    ),
    (
        "- **The hidden stream, on 2026-12-07** (`--granularity heads,ffn,hidden`, the calibration and evaluation "
        "above): with every group keeping the same share, perplexity 8.997 at keep 0.8 (the stream keeping 59 of 64 "
        "channels) and 28.86 at keep 0.6 (50); with the stream cut a sixth as deep as the budget and the heads and "
        "neurons taking the rest (62 and 60 channels), 7.95 and 20.15; with the stream whole, 6.65 and 15.08. As on "
        "minilm-sst2, every channel the stream loses costs more than the units its weights buy, and `compress` now "
        "gives every model the stream's share (`budget.stream_share`). That run first ended in a KeyError: "
        "stories260k's `lm_head` reads the embedding through a Transpose, and recovery tried to write a refit to it; "
        "it is now left as sliced (`recovery.COMPUTED_WEIGHT`)."
    ),
    (
        "- The targets (keep 0.8 at most 1.4x, keep 0.6 at most 2.5x) are not met: 6.65 is 1.55x and 15.08 is "
        "3.52x. Every step above together (a bias, query-head pruning, a bottom-heavy allocation) reached 6.39 "
        "(1.49x) and 13.0 (3.03x) in the study script: further than the product is, still short of the targets on "
        "this tiny, dense model. The model's own README measures 1.45x (6.21) for a milder cut, 20% of the FFN "
        "neurons alone with a least-squares refit."
    ),
]
