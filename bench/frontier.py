"""The encoder-frontier section of BENCHMARKS.md (issue 14): keep 0.3 and 0.2 on minilm-sst2 with `compress`'s
default options, `mi` (global allocation) against `wanda` (uniform), on the three calibration draws of the onnxsim
comparison; and the hidden stream at keep 0.4 and 0.3. `python -m bench.compare ... --only frontier` remeasures it.

What was measured on the way (allocation variants, refit inputs, the hidden stream's steps) is prose below the
tables: those runs needed code paths that were not kept."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from compressor import compress
from compressor.evaluation import evaluate_file

KEEPS = (0.3, 0.2)
METHODS = ("mi", "wanda")
SEEDS = (0, 1, 2)
HIDDEN_KEEPS = (0.4, 0.3)
GRANULARITIES = ("heads,ffn", "heads,ffn,hidden")
TARGETS = {0.3: 0.860, 0.2: 0.845}
KINDS = ("heads", "ffn")


def frontier_rows(model_dir: Path, calib: Path, data: Path, samples: int) -> list[dict]:
    """Every (keep, method, draw) at the default granularity, then both granularities at HIDDEN_KEEPS on draw 0."""
    runs = [("heads,ffn", keep, method, seed) for keep in KEEPS for method in METHODS for seed in SEEDS]
    runs += [(g, keep, method, 0) for keep in HIDDEN_KEEPS for g in GRANULARITIES for method in METHODS]
    rows = []
    runs = list(dict.fromkeys(runs))  # keep 0.3 at the default granularity on draw 0 is in both lists
    for granularity, keep, method, seed in runs:
        start = time.perf_counter()
        result = compress(
            model_dir / "model.onnx", calib, keep=keep, method=method, granularity=granularity.split(","),
            samples=samples, seed=seed,
        )  # fmt: skip
        rows.append(
            {
                "granularity": granularity,
                "keep": keep,
                "method": method,
                "seed": seed,
                "accuracy": evaluate_file(result.model, data, model_dir, None, None, 64)["accuracy"],
                "allocation": result.report["allocation"],
                **{kind: [g["units_after"] for g in result.report["groups"] if g["kind"] == kind] for kind in KINDS},
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def frontier_markdown(rows: list[dict], original: float) -> list[str]:
    lines = [
        "## Encoder frontier: keep 0.3 and 0.2 (issue 14)",
        "",
        (
            f"minilm-sst2, SST-2 dev (original **{original:.4f}**), `compress` with its default options (recovery "
            "on stream refits, `mi` choosing each layer's units again as recovery reaches it; `mi` allocates "
            "globally, `wanda` uniformly; with the hidden stream pruned, refits on the original's inputs, the stream "
            "cut a sixth as deep as the budget and the heads and neurons sharing the rest uniformly), 512 calibration "
            "sentences on the draws `--seed` 0, 1, 2 of the onnxsim comparison. "
            "Targets: keep 0.3 at least 0.860, keep 0.2 at least 0.845 on the mean, `mi` ahead of `wanda`."
        ),
        "",
        "| keep | method | draw 0 | draw 1 | draw 2 | mean | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    main = [r for r in rows if r["granularity"] == "heads,ffn" and r["keep"] in KEEPS]
    for keep in KEEPS:
        for method in METHODS:
            draws = {r["seed"]: r["accuracy"] for r in main if r["keep"] == keep and r["method"] == method}
            if not draws:
                continue
            mean = float(np.mean(list(draws.values())))
            cells = [f"{draws[s]:.4f}" if s in draws else "-" for s in SEEDS]
            met = "yes" if mean >= TARGETS[keep] and len(draws) == len(SEEDS) else "**no**"
            lines.append(f"| {keep} | {method} | {' | '.join(cells)} | {mean:.4f} | {TARGETS[keep]:.3f} | {met} |")
    lines += ["", "Heads and neurons kept per layer by `mi` (draw 0, bottom layer first):", ""]
    for row in (r for r in main if r["method"] == "mi" and r["seed"] == 0):
        lines.append(f"- keep {row['keep']}: heads {row['heads']}, neurons {row['ffn']}")
    lines += ["", "### The hidden stream (draw 0)", "", "| keep | granularity | mi | wanda |", "|---|---|---|---|"]
    for keep in HIDDEN_KEEPS:
        for granularity in GRANULARITIES:
            found = {
                r["method"]: r["accuracy"]
                for r in rows
                if r["keep"] == keep and r["granularity"] == granularity and r["seed"] == 0
            }
            if found:
                cells = [f"{found[m]:.4f}" if m in found else "-" for m in METHODS]
                lines.append(f"| {keep} | `{granularity}` | {' | '.join(cells)} |")
    return lines + ["", *NOTES.splitlines(), ""]


NOTES = """\
### What was measured on the way (draw 0 unless said)

- Global allocation (`--allocation global`, `mi`'s default on an encoder): every layer's heads and neurons are
  ranked by the variance the layer above reads from them (`ReadLoss`), one currency since every layer reads a
  LayerNorm'd stream; units go where they lose least per weight. At keep 0.3 it moved `mi` from 0.8417 (uniform) to
  0.8578; at keep 0.8 / 0.6 / 0.4 it measured 0.8750 / 0.8716 / 0.8727 against 0.8704 / 0.8727 / 0.8647 uniform.
  The speed, onnxsim and accuracy-by-method tables above were measured before it became `mi`'s default (uniform
  allocation). Its first form also ranked the top layer, which no layer reads through projections: that emptied it
  (1 head and 10 neurons at keep 0.4, 0.8509), so the top layer keeps the uniform share. With the hidden stream
  pruned too it measured 0.8303 against 0.8475 uniform at keep 0.4: there `mi` keeps the uniform default. Keeping 6 heads and 307 neurons in every layer (uniform, heads favoured) gave 0.8612 at keep 0.3
  with stream refits: heads are worth more per weight than neurons at this budget, which global allocation finds
  in the lower layers (6 of 12 heads kept).
- Held-out check (not the dev set): 2,000 SST-2 train sentences disjoint from the three calibration draws, keep
  0.3, draws 0 / 1 / 2. The original scores 0.9270 there; uniform 0.8920 / 0.8905 / 0.8890 (mean 0.8905), global
  0.8905 / 0.8880 / 0.8870 (mean 0.8885). The dev gain of global allocation (+1.8 points on the mean) does not show
  on these sentences, which the model was fine-tuned on (0.2 points lower): read it as "global helps on unseen
  sentences and costs a little of what the model memorised", not as a settled win.
- Stream refits (`--refit-inputs stream`) at keep 0.3, uniform allocation: 0.8486 mean of three draws against 0.8410
  with original inputs; with global allocation 0.8567 against 0.8578 (draw 0): not made the encoder default.
- Also refitting Q, K, V and FFN up on the pruned model's inputs (the readers of an unpruned stream), stream
  refits, keep 0.3: 0.8440 against 0.8429, at twice the recovery time; not kept.
- Global allocation on stories260k (decoder, stream refits): perplexity 17.55 at keep 0.6 against 15.96 uniform
  (it emptied the lowest layers' FFN), 6.87 against 6.89 at 0.8: decoders keep the uniform default.
- The hidden stream at keep 0.4 (`heads,ffn,hidden`, `mi`, uniform allocation): 0.7752 before (the accuracy table's
  row: only the attention output and FFN down projections refit), 0.8475 with every reader of the stream refit on
  its kept channels (each layer's Q, K, V, FFN up and the pooler, to the original's outputs), 0.8440 with each
  LayerNorm's scale and bias also refit per channel against the original's output (a least-squares line on the
  normalization over the kept channels): the LayerNorm refit bought nothing and was left out.
- The stream's share of the budget (`heads,ffn,hidden`, `mi`, original-input refits, uniform over heads and
  neurons; mean of three draws, SST-2 dev / the 2,000 held-out train sentences below). Keep 0.4: every group the
  same share (the stream keeping 247 of 384 channels) 0.8421 / 0.8767; the stream keeping 0.8 of its channels
  0.8490 / 0.8937, 0.9 0.8536 / 0.9017, 0.95 0.8624 / 0.9032; whole (`heads,ffn`) 0.8712 / 0.903. Keep 0.3: the
  same share (214 channels) 0.8318 / 0.8680, 0.8 0.8444 / 0.8903, 0.9 0.8482 / 0.8943; whole 0.8651 / 0.8942. Keep
  0.2: the same share (174) 0.7882 / 0.8232, 0.867 0.8192 / 0.8597. Every channel the stream loses costs more than
  the heads and neurons its weights buy, at every share measured: for accuracy alone the stream stays whole. For a
  user who asks for a narrower stream, `compress` now cuts the stream a sixth as deep as the budget (0.9 of
  it at keep 0.4, 0.883 at 0.3, 0.867 at 0.2; `budget.stream_share`), the heads and neurons sharing the rest: as
  shipped 0.8524 / 0.9015, 0.8471 / 0.8928, 0.8238 / 0.8692 at keep 0.4 / 0.3 / 0.2 (346 / 339 / 333 channels),
  against 0.8421 / 0.8767, 0.8318 / 0.8680, 0.7882 / 0.8232 with the same share. On the held-out sentences keep 0.4
  and 0.3 come within 0.2 points of `heads,ffn`; on the dev set they stay 1.9 and 1.8 points below it, so issue
  14's hidden-stream target (at least as accurate as `heads,ffn`) is not met. Decoders take the stream's share too
  (stories260k: BENCHMARKS.md's decoder notes). With the stream at 0.9 (draw 0), stream refits measured 0.8521, and with global
  allocation of the heads and neurons 0.8612, against 0.8601 for original-input refits, which stay the default.
  `wanda` with the stream's share, three draws: 0.8624 / 0.9013 at keep 0.4, 0.8433 / 0.8893 at keep 0.3.
- LayerNorm over fewer channels (draw 0, measured on the shipped models, not kept): with every group the same share
  at keep 0.4, the largest channel by mean magnitude in layers 2 to 5 (223) was among those pruned; across tokens
  the ratio of the full standard deviation to the kept channels' then varied by 4 to 67% (coefficient of variation,
  per LayerNorm), and the normalization over the kept channels missed the full one at those channels by 8 to 39%
  (relative error). Fitting the full variance (plus epsilon) as a line in the kept channels' variance on 256
  calibration sentences and folding it into each LayerNorm's epsilon and scale (no new operator) brought that to 2
  to 29% and the logits' mean squared error against the original's down 15% (0.785 to 0.668), but dev accuracy
  moved 0.8475 to 0.8475 at keep 0.4, 0.8360 to 0.8406 at keep 0.3 and 0.8601 to 0.8555 with the stream at 0.9:
  what the stream loses is the information its pruned channels carry, not their part in the normalization.
- Stream refits with every reader refit and `mi`'s units chosen again (b62dc50, the tables above): each layer's
  Q, K, V and FFN up are refit from the stream the pruned model computes to the original's outputs, and `mi`
  chooses the layer's heads and neurons again as recovery reaches it, among all of them as the pruned layers below
  compute them, keeping those whose least-squares refit to the original stream loses least (`scoring.RefitLoss`,
  an optimal-brain-surgeon loss per head or neuron): keep 0.3 0.8658 / 0.8658 / 0.8635 (mean 0.8651, from 0.8589
  with original-input refits), keep 0.2 0.8589 / 0.8417 / 0.8601 (0.8536, from 0.8348), keep 0.4 0.8704 /
  0.8761 / 0.8670 (0.8712), keep 0.6 / 0.8 0.8739 / 0.8750 (draw 0). On the 2,000 held-out train sentences below,
  keep 0.3: 0.8910 / 0.8965 / 0.8950 (mean 0.8942, against 0.8885 for original-input refits): the gain shows on
  unseen sentences too. `wanda` with the same stream refits (its own units): 0.8387 / 0.8291 at keep 0.3 / 0.2.
  With the hidden stream pruned, stream refits measured 0.8349 / 0.8200 at keep 0.4 / 0.3 against 0.8475 / 0.8360
  for original-input refits, which stay that case's default.
- Not tried: removing whole layers at small budgets, a refit of the stream's LayerNorms from the pruned model's
  own inputs."""
