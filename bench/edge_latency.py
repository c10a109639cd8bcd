"""The edge-latency table of BENCHMARKS.md: what one process on a small CPU pays for the original, `compress --keep
0.4` and `compress --keep 0.4 --quantize int8`, as edge latency tools report it (cold start, first inference,
p50/p99, peak memory, run-to-run spread), at batch 1, sequence 128, with 1 and 2 intra-op threads; followed by the
hand-measured section on encoder speed at keep 0.4 (int8 and batch 1, issue 14)."""

from __future__ import annotations

from pathlib import Path

import onnx

from bench.deployment import Settings, run_bench
from compressor import compress

KEEP = 0.4
THREADS = (1, 2)
SEQ = 128


def edge_models(model_dir: Path, calib: Path, samples: int, saved: Path) -> list[tuple[str, Path]]:
    """(name, path) of the three models, the compressed ones written to `saved`."""
    models = [("original", model_dir / "model.onnx")]
    for name, quantize in ((f"compress --keep {KEEP}", None), (f"compress --keep {KEEP} --quantize int8", "int8")):
        path = saved / f"edge-{'int8' if quantize else 'float'}.onnx"
        result = compress(model_dir / "model.onnx", calib, keep=KEEP, samples=samples, quantize=quantize)
        onnx.save(result.model, str(path))
        models.append((name, path))
    return models


def edge_rows(models: list[tuple[str, Path]], runs: int, seq: int = SEQ) -> list[dict]:
    """`compress bench` rows of the three models, interleaved, with a fresh process per row for the cold figures."""
    settings = Settings(["cpu"], [1], [seq], list(THREADS), warmup=3, runs=runs, memory=True)
    result = run_bench([path for _, path in models], settings)
    names = {str(path): name for name, path in models}
    keys = ("threads", "cold_start_ms", "first_run_ms", "p50_ms", "p99_ms", "spread", "speedup", "peak_memory_mb")
    return [
        {"model": names[row["path"]], **{k: row[k] for k in keys}, "file_mb": row["file_mb"]} for row in result.rows
    ]


def edge_markdown(rows: list[dict], runs: int) -> list[str]:
    lines = [
        "## Edge latency: cold start, first inference, steady state (CPU, batch 1)",
        "",
        (
            f"`compress bench --batch 1 --seq {SEQ} --threads {','.join(map(str, THREADS))} --runs {runs}` on the "
            f"original, `compress --keep {KEEP}` and `compress --keep {KEEP} --quantize int8`. Cold start: reading the "
            "model and creating the session in a fresh process (page-cached file); first run: that process's first "
            "inference; peak RSS: the same process's high-water mark. p50/p99 and spread ((p90 - p10) / p50) from the "
            "interleaved runs of one process. A speedup within the original's spread is noise."
        ),
        "",
        "| model | threads | cold start ms | first run ms | p50 ms | p99 ms | spread | speedup | peak RSS MB | file MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['threads']} | {row['cold_start_ms']:.0f} | {row['first_run_ms']:.1f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['spread']:.0%} | {row['speedup']:.2f}x | "
            f"{row['peak_memory_mb']:.0f} | {row['file_mb']} |"
        )
    return lines + [""] + ENCODER_SPEED.splitlines() + [""]


# Measured by hand (issue 14), not by this module: kept here so that regenerating the page keeps it after the table.
ENCODER_SPEED = """\
## Encoder speed at keep 0.4: int8 and batch 1 (issue 14)

Measured by hand on 2026-11-25 (17:00-18:05 UTC), same machine and versions as above (AMD EPYC, 2 cores, AVX2 without
VNNI; ONNX Runtime 1.32.0): `compress --keep 0.4` on minilm-sst2 (calibration `train.tsv`, 512 samples), its outputs
with `--quantize int8`, `--optimize` and `--optimize --quantize int8`, timed as `compress bench` times
(`compressor.timing.interleaved`: the models of a table take turns in every round, intra-op threads ONNX Runtime's
default and not spinning, sequence 128, token ids from the vocabulary). **The machine was shared and loaded the whole
time: load average 7 to 12 on 2 cores** (the original took 2.6-2.9 s at batch 32 against 535 ms in the table above,
66-108 ms at batch 1 against 22-37 ms). A loaded machine lowers every speedup (the int8 model of the table above, 4.69x
there, measured 3.53-3.72x here), so the ratios below are only comparable within a row set, and the targets are judged
by the ratio of each change to the model it replaces in the same rounds, applied to the quiet numbers above. A second
measure that the load disturbs less: CPU time of the calling thread with one intra-op thread (`thread_time`).

### What holds each back: ONNX Runtime's profiler

`SessionOptions.enable_profiling`, kernel time by operator type as a share of all kernel time (30 runs at batch 1, 4
at batch 32, after warm-up; each model in its own session). "Size arithmetic": Shape, Gather, Unsqueeze, Concat,
Slice, Cast, Sqrt, Div, Reshape, Where (the Reshape targets and attention scale computed from the input's shape, the
embedding Gather and mask).

| batch 1 | MatMul | Attention | SkipLayerNorm | LayerNorm + residual Add/Sum | bias Add | BiasGelu | Transpose + Softmax + Mul | size arithmetic | kernel ms per run |
|---|---|---|---|---|---|---|---|---|---|
| original | 79.8% | - | - | 1.9% + (in Add) | 6.0% (all Adds) | 5.2% | 4.8% | 2.2% | 81.9 |
| keep 0.4 | 72.8% | - | - | 2.9% + (in Add) | 7.8% (all Adds) | 3.1% | 4.1% | 8.9% | 38.0 |
| keep 0.4, ORT's full fusion | 57.8% | 20.5% | **16.7%** | - | - | 3.0% | - | 1.7% (EmbedLayerNorm) | 41.1 |
| keep 0.4 `--optimize` (now) | 58.5% | 25.7% | - | 3.6% + 2.8% | 1.7% | 5.1% | - | 1.5% (EmbedLayerNorm, Gather) | 35.7 |

| batch 32 | int8 MatMul (DynamicQuantizeMatMul, MatMulIntegerToFloat, QAttention) | float MatMul | SkipLayerNorm | LayerNorm + Sum | Gelu / BiasGelu | Add | Transpose + Softmax | kernel ms per run |
|---|---|---|---|---|---|---|---|---|
| original | - | 83.6% | - | 1.3% | 4.3% | 4.9% | 4.6% | 3024 |
| keep 0.4 | - | 79.6% | - | 3.7% | 4.7% | 7.7% | 2.8% | 1264 |
| keep 0.4 int8, before | 43.3% + 14.3% | 10.1% | **10.3%** (6 of 12) | 1.8% | 7.3% | 4.8% | 4.3% | 963 |
| keep 0.4 int8, now | 46.2% + 14.1% | 11.7% | - | 4.9% + 2.7% | 8.4% | 3.6% | 4.6% | 738 |
| keep 0.4 `--optimize --quantize int8` | 50.2% + 28.7% (QAttention) | - | - | 5.3% + 2.7% | 9.7% | - | - | 757 |
| keep 0.4 int8, quiet machine (2026-12-07, 8 runs) | 31.9% + 11.7% | 12.2% | - | 7.0% + 8.2% | 4.4% | 8.6% | 8.8% | 66.5 |

What the profiles say:
- **SkipLayerNormalization is slow on this CPU.** ONNX Runtime's CPU kernel is a plain loop per row; twelve of them on
  (32, 128, 384) took 209 ms against 70 ms for the same bias Add, residual Add and LayerNormalization unfused
  (6.8 against 1.7 ms at batch 1; 518 against 155 ms with one thread), and a two-input `Sum` in place of the residual
  Add costs the same as the Add (46.1 against 47.5 ms; 0.84 against 0.84 ms). It is the main reason ORT's fusion lost
  at batch 32 (2.20x against 2.48x unfused in the table above): it took 16% of the fused model's time.
- **The int8 model had it without asking**: `quantize_dynamic` writes the shapes it inferred as `value_info`, and with
  them ONNX Runtime's session-time SkipLayerNormFusion matched the residual Add and LayerNormalization after each FFN
  (6 of 12; the float model, without `value_info`, had none): 10-16% of the int8 model's batch-32 time in two
  profiles.
- **At batch 1 the pruned model does more size arithmetic than the original** (8.9% of 38 ms against 2.2% of 82 ms):
  slicing left the 24 Concats that spelled the old Reshape targets (12 heads, 384) beside the new ones, read by
  nothing, and ONNX Runtime runs every node. The rest of batch 1's gap to the FLOPs ideal is work that does not shrink
  with the widths (LayerNorm, residual adds over the full hidden stream, per-node overhead).
- What is left of int8 at batch 32 is the int8 GEMMs themselves (60%, U8S8 on AVX2), the float attention products
  (12%) and the exact Gelu (8%).
- **On a quiet machine the int8 GEMMs are under half of it** (the last row, 2026-12-07; the original took 302 ms per
  run in a profile of the day before, 4.5 times the int8 model's): the float parts that quantization leaves, the
  attention (its products 8.1 ms, the mask's Add 5.7, Transposes 3.4, Softmax 2.5) and the residual Sums and
  LayerNorms (10.1 ms), are what hold keep 0.4 + int8 under 5x; the embeddings' DequantizeLinear adds 1.5 ms. ONNX
  Runtime's fused forms do not shrink them on this CPU: QAttention took 27.4 ms per run, what the unfused attention
  takes with its Q, K and V projections, and a graph fused with SkipLayerNormalization 41.8 ms where Sum and
  LayerNormalization take 10.1. FFN widths rounded for the int8 kernels would not help: one DynamicQuantizeMatMul of
  4,096 rows by 384 inputs took the same time per column (within 5%, 30 interleaved runs) at 600, 608, 614 and 640
  outputs, and at those widths as inputs to 384 outputs.

### What changed, and what each bought

- `graph_passes/residual_sums.py`: the Add that feeds a LayerNormalization is written as `Sum` (same sum, same speed),
  which ONNX Runtime's fusion does not match. Applied to every `--quantize int8` output and to `--optimize`.
- `graph_passes/dead_nodes.py`: nodes nothing reads are dropped, with the initializers only they read. Applied to
  every `--quantize int8` output (the 24 dead Concats), and since 2026-12-07 to every `compress` output (minilm-sst2
  at keep 0.4, batch 1: 1.87x to 1.91x and 1.92x the original in two 50-run rounds).
- `--optimize` fuses Attention, EmbedLayerNormalization and BiasGelu but not SkipLayerNormalization, writes the
  residual sums as `Sum`, and keeps the fusion only if it is not slower at batch 1 nor at `--batch-size` (it was
  timed at `--batch-size` only; since 2026-12-07 it must be faster at the two together and at most 5% slower at
  either). On minilm-sst2 at keep 0.4 (then uniform) it was kept: `p50_ms` 386 -> 362 ms at batch 32 and 12.7
  -> 11.8 ms at batch 1 on calibration inputs (sequence 51), outputs within 7e-7.
- `--optimize --quantize int8` used to stop in the quantizer at the first MatMul after a fused Attention (ONNX shape
  inference cannot type contrib-op outputs); the quantizer is now told that such tensors are float, and the fused
  graph quantizes to QAttention, DynamicQuantizeMatMul and QEmbedLayerNormalization.

Same rounds, medians of each round's p50 (ORT default threads), and the gain of the change over the model it
replaces, round by round (CPU time with one thread in brackets):

| batch | model | rounds | load | p50 ms | speedup | gain over | CPU-time speedup, 1 thread |
|---|---|---|---|---|---|---|---|
| 32 | original (fp32) | 5 | 6.5-10.9 | 2891.0 | 1.00x | - | 1.00x |
| 32 | `--keep 0.4 --quantize int8`, before | 5 | 6.5-10.9 | 778.6 | 3.70x | - | 3.93x |
| 32 | `--keep 0.4 --quantize int8`, now | 5 | 6.5-10.9 | 706.0 | 4.11x | int8 before 1.13x (1.15x) | 4.39x |
| 32 | `--keep 0.4 --optimize --quantize int8`, now | 5 | 6.5-10.9 | 656.8 | 4.28x | int8 before 1.18x (1.16x) | 4.61x |
| 1 | original (fp32) | 5 | 7.4-11.3 | 83.1 | 1.00x | - | 1.00x |
| 1 | `compress --keep 0.4` | 5 | 7.4-11.3 | 33.6 | 2.27x | - | 2.33x |
| 1 | keep 0.4, ORT's full fusion (before `--optimize` changed) | 5 | 7.4-11.3 | 37.4 | 2.21x | - | 2.13x |
| 1 | `--keep 0.4 --optimize` (now) | 5 | 7.4-11.3 | 32.6 | 2.41x | keep 0.4 1.09x (1.06x); full fusion 1.10x (1.17x) | 2.49x |
| 1 | `--keep 0.4 --quantize int8`, before | 5 | 7.4-11.3 | 25.0 | 3.28x | - | - |
| 1 | `--keep 0.4 --quantize int8`, now | 5 | 7.4-11.3 | 21.1 | 3.58x | int8 before 1.11x | - |
| 1 | `--keep 0.4 --optimize --quantize int8`, now | 5 | 7.4-11.3 | 22.2 | 3.94x | int8 before 1.20x | - |

Dev accuracy (`compress eval`, all 872 sentences): original 0.8704; keep 0.4 0.8647; keep 0.4 int8 0.8612 before and
now (Sum and dropped nodes change no value); keep 0.4 `--optimize` 0.8647; keep 0.4 `--optimize --quantize int8`
0.8647. All within 3 points (-0.92 and -0.57 points for the int8 models).

### Targets, as far as this loaded machine can tell

- **(a) `compress --keep 0.4 --quantize int8` at least 5x the fp32 original at batch 32, accuracy within 3 points.**
  Measured here 4.11x (the int8 model it replaces: 3.70x in the same rounds); the change gains 1.13x over it (1.15x in
  CPU time), which on the quiet 4.69x of the table above makes **about 5.3x**; `--optimize --quantize int8` gains
  1.18x, **about 5.5x**. Dev accuracy 0.8612 (-0.92 points) and 0.8647 (-0.57). Met by that estimate, not by a direct
  measurement: this machine was never quiet during the session. The int8 rows of the table above come from
  `quantize_int8`, so the next `python -m bench.compare` measures the new int8 model directly.
- **(b) `compress --keep 0.4` at batch 1 at least 90% of the FLOPs ideal (2.51x).** With `--optimize`: measured
  2.41x here (96%; 2.49x, 99%, in CPU time), 1.10x faster than the full fusion (whose form gave 2.54x quiet as
  `compress mi, fused input` above), and 1.09x faster than the unfused model (2.09x quiet, so about 2.28x, 91%). `--optimize` now keeps the fusion at batch 32 as
  well: float at batch 32 it measured 1.07x faster in the optimize step's own timing (386 -> 362 ms, sequence 51)
  and 1.07-1.10x faster at sequence 128 in 3 of 4 loaded rounds (0.93x in the fourth, whose spread was over 80%),
  and 1.18x faster once quantized (above), so the fusion no longer wins at one batch and loses at the other. **Met with `--optimize`.** Without it, `compress --keep 0.4`
  writes the same graph as before (2.07-2.09x quiet, 82-83%): dropping its 24 dead Concats bought 1.03x in CPU time
  at batch 1 (one round; `graph_passes.dead_nodes` on it), which would not reach 90% alone; it needs the call in
  `graph_passes/slicing.py`, which this work did not edit.

### Measured and not kept

- int8 settings, one round at batch 32 (load 8.6; per-channel int8 weights with SkipLayerNormalization kept out by
  dropping the quantizer's `value_info`, the same effect as the Sums: 4.03x): per-tensor weights 3.88x,
  `reduce_range` (7-bit weights) 3.95x, uint8 weights 3.40x, int8 attention products too (`MatMulConstBOnly` off)
  3.92x. None faster; per-channel stays.
- Q, K and V merged into one MatMul and a Split (a pure ONNX prototype, same outputs to the bit): +2% for int8 at
  batch 32, +7% for float at batch 1 in one round each at load 12, within the noise of that load; not shipped.
- The full ORT fusion at batch 1 was the only form above 90% of the ideal before; without SkipLayerNormalization it is
  faster at both batches, so `--optimize` no longer has to choose between them.
"""
