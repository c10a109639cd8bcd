"""Regenerate BENCHMARKS.md: accuracy, CPU speed and size of `compress` next to the other ways to get speed.

    pip install -e ".[bench]"   # onnxsim and matplotlib
    python -m bench.compare --model ../shared/models/minilm-sst2 \
        --calib ../shared/data/sst2/train.tsv --data ../shared/data/sst2/dev.tsv --out BENCHMARKS.md

`--only edge` remeasures the edge-latency section alone (bench/edge_latency.py), `--only decoder` the decoder
perplexity section (bench/decoder_tables.py, stories260k from ../shared), `--only decoder-speed` the speed of a
150M random-weight Llama before and after compress (bench/decoder_speed.py; built by the GenAI builder and run by
onnxruntime_genai too, bench/genai_speed.py), and rewrite the page from the other sections' stored rows
(bench/results/compare.json). `--only size` measures time and memory of compress on BERT-shaped encoders from 0.04
to 2.9 GB (bench/size.py). `--only architectures` runs compress and onnxsim on every model type of the architecture
sweep (bench/architecture_table.py); `--only frontier` the encoder frontier, keep 0.3 and 0.2 and the hidden stream
(bench/frontier.py); `--only accuracy` the accuracy tables (bench/accuracy_tables.py); `--only speed` onnxsim, speed,
FLOPs and cost beside the stored accuracy tables, of which the models that the speed section times are made again.
Any model folder (model.onnx plus tokenizer) and any labelled file work the same way. It measures: `compress` with
every method at keep 0.8 to 0.2 on three calibration draws, with every granularity and recovery setting (accuracy); at
keep 0.8 / 0.6 / 0.4, unstructured magnitude pruning at the same sparsity (zeros in dense tensors), onnxsim's
structured pruning, ONNX Runtime dynamic int8 (per channel) alone and after `compress`. Speed: `compress bench`'s
interleaved timing, CPU, sequence 128, batch 1 and 32, every variant of one keep timed in the same rounds as the
original. Writes the page, two PNG figures and the raw rows (bench/results/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import onnx

from bench import accuracy_tables, plots
from bench.accuracy_tables import KEEPS, saved_name
from bench.architecture_table import architecture_markdown, architecture_rows
from bench.decoder_speed import measure as decoder_speed_rows
from bench.decoder_speed import speed_markdown as decoder_speed_markdown
from bench.decoder_tables import decoder_markdown, decoder_rows
from bench.deployment import Settings, run_bench
from bench.edge_latency import edge_markdown, edge_models, edge_rows
from bench.flops import matmul_flops_per_token
from bench.frontier import frontier_markdown, frontier_rows
from bench.genai_speed import genai_markdown, measure_genai
from bench.int4_tables import int4_markdown, int4_rows
from bench.int4_tables import measured_at as int4_measured_at
from bench.machine import describe, header_line
from bench.size import SHAPES, size_markdown, size_rows
from bench.unstructured_pruning import magnitude_zeroed
from compressor import compress
from compressor.evaluation import evaluate_file
from compressor.optimization import fuse
from compressor.quantization import quantize_int8
from compressor.scoring import METHODS
from graph_passes import load_model

RESULTS = Path(__file__).parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared"
SEQ = 128
BATCHES = (1, 32)


def _accuracy(model: Path | onnx.ModelProto, folder: Path, data: Path) -> float:
    loaded = load_model(model) if isinstance(model, Path) else model
    return evaluate_file(loaded, data, folder, None, None, 64)["accuracy"]


def build_variants(
    model_dir: Path, calib: Path, data: Path, samples: int, saved: Path, rows: list[dict], peers: list[dict]
) -> list[dict]:
    """Every model of the speed comparison: file, family, keep and dev accuracy (what is not measured yet is now)."""
    original = model_dir / "model.onnx"
    fused, int8 = saved / "fused.onnx", saved / "int8.onnx"
    onnx.save(fuse(load_model(original)), str(fused))
    onnx.save(quantize_int8(load_model(original)), str(int8))
    variants = [
        {"family": family, "keep": None, "path": path, "accuracy": _accuracy(path, model_dir, data)}
        for family, path in (("original", original), ("original, ORT-fused", fused), ("int8 alone", int8))
    ]
    setting = accuracy_tables.SPEED_SETTING
    found = {(r["method"], r["keep"]): r for r in rows if (r["granularity"], r["recovery"], r["seed"]) == setting}
    for keep in KEEPS:
        for method in METHODS:
            path = saved / saved_name(f"compress-{method}", keep)
            accuracy = found[(method, keep)]["accuracy"]
            variants.append({"family": f"compress {method}", "keep": keep, "path": path, "accuracy": accuracy})
        variants += _derived(model_dir, calib, data, samples, saved, keep)
        peer = next(p for p in peers if p["keep"] == keep and p["seed"] == accuracy_tables.SEEDS[0])
        if peer["accuracy"] is not None:
            path = saved / saved_name("onnxsim", keep)
            variants.append({"family": "onnxsim structured", "keep": keep, "path": path, "accuracy": peer["accuracy"]})
    return variants


def _derived(model_dir: Path, calib: Path, data: Path, samples: int, saved: Path, keep: float) -> list[dict]:
    """At one keep: compress mi then int8 (what --quantize int8 does), compress mi on the ORT-fused original, and
    unstructured magnitude pruning."""
    quantized = saved / saved_name("compress-mi-int8", keep)
    onnx.save(quantize_int8(load_model(saved / saved_name("compress-mi", keep))), str(quantized))
    from_fused = saved / saved_name("compress-mi-fused-input", keep)
    result = compress(load_model(saved / "fused.onnx"), calib, keep=keep, samples=samples, tokenizer=model_dir)
    onnx.save(result.model, str(from_fused))
    zeroed = saved / saved_name("magnitude-zeroed", keep)
    onnx.save(magnitude_zeroed(load_model(model_dir / "model.onnx"), keep), str(zeroed))
    families = (
        ("compress mi --quantize int8", quantized),
        ("compress mi, fused input", from_fused),
        ("unstructured magnitude", zeroed),
    )
    return [
        {"family": family, "keep": keep, "path": path, "accuracy": _accuracy(path, model_dir, data)}
        for family, path in families
    ]


def measure_speed(variants: list[dict], threads: int, runs: int) -> list[dict]:
    """Per keep, the original, int8 alone and that keep's variants timed together; adds speedups and p50s."""
    fixed = [v for v in variants if v["keep"] is None]
    timed: dict[tuple, list[dict]] = {}
    settings = Settings(["cpu"], list(BATCHES), [SEQ], [threads], warmup=2, runs=runs, memory=False)
    for keep in KEEPS:
        group = fixed + [v for v in variants if v["keep"] == keep]
        result = run_bench([v["path"] for v in group], settings)
        for variant in group:
            mine = [row for row in result.rows if row["path"] == str(variant["path"])]
            timed.setdefault((variant["family"], variant["keep"]), []).extend(mine)
    points = []
    for variant in variants:
        measured = timed[(variant["family"], variant["keep"])]
        point = {k: v for k, v in variant.items() if k != "path"}
        point["file_mb"] = measured[0]["file_mb"]
        for batch in BATCHES:
            rows = [r for r in measured if r["batch"] == batch]
            point[f"speedup_b{batch}"] = round(statistics.median(r["speedup"] for r in rows), 3)
            point[f"p50_ms_b{batch}"] = round(statistics.median(r["p50_ms"] for r in rows), 2)
        points.append(point)
    return points


def flops_table(model_dir: Path, saved: Path, points: list[dict]) -> list[dict]:
    """Ideal speedup from MatMul FLOPs per token (sequence 128) against the measured one, per keep.

    `mi` allocates heads and neurons across layers and the other methods uniformly, so their models of one keep
    differ in attention FLOPs: each `compress` model's share of its own ideal is taken, and the row's share is their
    median, so that one slow moment cannot decide it. FLOPs, ideal and speedup shown are `mi`'s (the default)."""
    original = matmul_flops_per_token(load_model(model_dir / "model.onnx"), SEQ)
    point = {(p["family"], p["keep"]): p for p in points}
    found = []
    for keep in KEEPS:
        ideals = {
            method: original / matmul_flops_per_token(load_model(saved / saved_name(f"compress-{method}", keep)), SEQ)
            for method in METHODS
        }
        speedups = {method: point[(f"compress {method}", keep)]["speedup_b32"] for method in METHODS}
        shares = [round(speedups[method] / ideals[method], 3) for method in METHODS]
        found.append(
            {
                "keep": keep,
                "mflops_per_token": round(original / ideals["mi"] / 1e6, 2),
                "original_mflops_per_token": round(original / 1e6, 2),
                "ideal_speedup": round(ideals["mi"], 3),
                "speedup_b32": speedups["mi"],
                "share_of_ideal_each": shares,
                "share_of_ideal": statistics.median(shares),
            }
        )
    return found


def speed_markdown(points: list[dict], flops: list[dict], runs: int, threads: int) -> list[str]:
    lines = [
        "## Speed, size and accuracy on CPU",
        "",
        f"`compress bench` timing: sequence {SEQ}, ONNX Runtime CPU provider, intra-op threads {threads or 'default'} "
        "(not spinning between runs), "
        f"{runs} timed runs per model after 2 warm-up runs, the models of one keep taking turns with the three "
        "keep-less variants in the same rounds. Speedup: the original's median latency over the model's (keep-less "
        "variants: median over the three rounds). Unstructured magnitude: each encoder matrix keeps its largest `keep` "
        "fraction of weights, the rest zeroed in place. onnxsim: its best pipeline (below), a graph fused by ONNX "
        "Runtime's optimizer. ORT-fused: the graph as `onnxruntime.transformers.optimizer.optimize_model` fuses it "
        "(Attention, SkipLayerNormalization, BiasGelu...); `compress mi, fused input` compresses that fused graph. "
        "int8: `onnxruntime.quantization.quantize_dynamic`, int8 weights per channel (what `--quantize int8` runs).",
        "",
        "![accuracy against speedup](bench/results/accuracy_vs_speedup.png)",
        "![accuracy against file size](bench/results/accuracy_vs_size.png)",
        "",
        "| keep | variant | dev accuracy | speedup batch 1 | speedup batch 32 | p50 ms batch 32 | file MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in sorted(points, key=lambda p: -(p["keep"] or 1.0)):
        keep = "-" if point["keep"] is None else point["keep"]
        lines.append(
            f"| {keep} | {point['family']} | {point['accuracy']:.4f} | {point['speedup_b1']:.2f}x | "
            f"{point['speedup_b32']:.2f}x | {point['p50_ms_b32']} | {point['file_mb']} |"
        )
    lines += [
        "",
        f"### Measured speedup against the FLOPs ratio (`compress`, CPU, batch 32, sequence {SEQ})",
        "",
        "Ideal speedup: the original's MatMul FLOPs per token over the compressed model's (projections and attention "
        "products, from the sizes of one ONNX Runtime run), and the measured speedup: `compress mi`'s. `mi` allocates "
        "heads and neurons across layers, the other methods uniformly, so each `compress` model's measured speedup is "
        "set against its own ideal; share of ideal: the median of the four (each in brackets).",
        "",
        "| keep | MFLOPs per token | original | ideal speedup | measured | share of ideal |",
        "|---|---|---|---|---|---|",
    ]
    for row in flops:
        lines.append(
            f"| {row['keep']} | {row['mflops_per_token']} | {row['original_mflops_per_token']} | "
            f"{row['ideal_speedup']:.2f}x | {row['speedup_b32']:.2f}x | {row['share_of_ideal']:.1%} ("
            + ", ".join(f"{x:.1%}" for x in row["share_of_ideal_each"])
            + ") |"
        )
    return lines + [""]


def targets_markdown(found: dict) -> list[str]:
    """The issues' measurable targets, each with the measured value from this run and whether it is met."""
    point = {(p["family"], p["keep"]): p for p in found["points"]}
    original = found["original_accuracy"]
    checks = []  # accuracy changes are written 0.0 - drop: an unchanged accuracy reads +0.00, not -0.00
    for keep, allowed in ((0.6, 1.0), (0.4, 3.0)):
        drop = 100 * (original - point[("compress mi", keep)]["accuracy"])
        checks.append(
            (
                f"keep {keep}: dev accuracy within {allowed} points of the original",
                f"{0.0 - drop:+.2f} points",
                drop <= allowed,
            )
        )
    for mean in accuracy_tables.peer_means(found["onnxsim"]):
        checks.append(
            (
                f"keep {mean['keep']}: ahead of onnxsim at its kept parameter count ({mean['kept']:.3f}), mean dev "
                f"accuracy over {mean['draws']} calibration draws",
                f"{mean['compress']:.4f} vs {mean['onnxsim']:.4f} (ahead on {mean['compress_ahead']} of "
                f"{mean['draws']} draws)",
                mean["compress"] > mean["onnxsim"],
            )
        )
    share = found["flops"][-1]
    checks.append(
        (
            f"keep {share['keep']}, batch 32: speedup at least 90% of the FLOPs ideal ({share['ideal_speedup']:.2f}x)",
            f"{share['speedup_b32']:.2f}x, {share['share_of_ideal']:.1%}",
            share["share_of_ideal"] >= 0.9,
        )
    )
    int8 = point[("compress mi --quantize int8", 0.4)]
    drop = 100 * (original - int8["accuracy"])
    checks.append(
        (
            "keep 0.4 + int8, batch 32: at least 3.5x faster, dev accuracy within 3 points",
            f"{int8['speedup_b32']:.2f}x, {0.0 - drop:+.2f} points",
            int8["speedup_b32"] >= 3.5 and drop <= 3.0,
        )
    )
    for cost in found["costs"]:
        share = cost["stages"]["recovery"] / sum(cost["stages"].values())
        checks.append(
            (f"recovery under half of compress time ({cost['samples']} samples)", f"{share:.0%}", share < 0.5)
        )
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {value} | {'yes' if met else '**no**'} |" for target, value, met in checks]
    # a section remeasured alone (--only) after the defaults changed says which older rows it did not remeasure
    return lines + (["", found["stale"]] if "stale" in found else []) + [""]


def render(args: argparse.Namespace, machine: dict, found: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated {header_line(machine)}, by `python -m bench.compare --model {args.model} --calib {args.calib} "
        f"--data {args.data}`.",
        "",
        f"Model `{args.model.name}`; calibration: {args.samples} samples drawn from `{args.calib.name}` (seeded), of "
        f"which a fifth is held out for the fidelity check; accuracy on all of `{args.data.name}`.",
        "",
    ]
    lines += targets_markdown(found)
    lines += speed_markdown(found["points"], found["flops"], args.runs, args.threads)
    lines += edge_markdown(found["edge"], args.runs) if "edge" in found else []
    lines += decoder_markdown(found["decoder"]) if "decoder" in found else []
    lines += size_markdown(found["size"]) if "size" in found else []
    lines += int4_markdown(found["int4"]["rows"], found["int4"]["commit"]) if "int4" in found else []
    lines += decoder_speed_markdown(found["decoder_speed"]) if "decoder_speed" in found else []
    lines += genai_markdown(found["decoder_speed"]["genai"]) if "genai" in found.get("decoder_speed", {}) else []
    lines += architecture_markdown(found["architectures"]) if "architectures" in found else []
    lines += accuracy_tables.accuracy_markdown(
        found["original_accuracy"], found["rows"], found["onnxsim"], found["costs"]
    )
    lines += frontier_markdown(found["frontier"], found["original_accuracy"]) if "frontier" in found else []
    return "\n".join(lines + ["Raw rows: `bench/results/compare.json`.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="folder with model.onnx and its tokenizer")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--cost-samples", default="512,5000")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per model and batch size")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--decoder", type=Path, default=SHARED / "models" / "stories260k")
    parser.add_argument("--stories", type=Path, default=SHARED / "data" / "tinystories" / "valid-head.txt")
    parser.add_argument("--wikitext", type=Path, default=SHARED / "data" / "wikitext-2" / "wiki.valid.raw")
    parser.add_argument(
        "--only",
        choices=["edge", "decoder", "decoder-speed", "int4", "size", "architectures", "frontier", "accuracy", "speed"],
        help="remeasure one section, keep the stored rows of the others",
    )
    args = parser.parse_args()
    found = json.loads((RESULTS / "compare.json").read_text()) if args.only else measure_all(args)
    if args.only in (None, "edge"):
        with tempfile.TemporaryDirectory(prefix="mi-edge-") as folder:
            found["edge"] = edge_rows(edge_models(args.model, args.calib, args.samples, Path(folder)), args.runs)
    if args.only in (None, "decoder"):
        found["decoder"] = decoder_rows(args.decoder, args.stories, args.wikitext)
    if args.only in (None, "int4"):
        found["int4"] = {"commit": int4_measured_at(), "rows": int4_rows(args.decoder, args.stories)}
    if args.only in (None, "decoder-speed"):
        with tempfile.TemporaryDirectory(prefix="mi-decoder-speed-") as folder:
            found["decoder_speed"] = decoder_speed_rows(Path(folder), runs=3, warmup=1)
            found["decoder_speed"]["genai"] = measure_genai(
                Path(folder) / "hf", Path(folder), args.stories, prompts=2, new_tokens=32, runs=10
            )
    if args.only in (None, "size"):
        found["size"] = size_rows(list(SHAPES))
    if args.only in (None, "architectures"):
        found["architectures"] = architecture_rows()
    if args.only in (None, "frontier"):
        found["frontier"] = frontier_rows(args.model, args.calib, args.data, args.samples)
    if args.only == "accuracy":  # measured with every other section of the first group otherwise (`measure_all`)
        with tempfile.TemporaryDirectory(prefix="mi-accuracy-") as folder:
            found["rows"] = accuracy_tables.accuracy_table(
                args.model, args.calib, args.data, args.samples, Path(folder)
            )
    if args.only == "speed":
        found.update(measure_speed_sections(args, found["rows"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare.json").write_text(json.dumps(found, indent=1) + "\n")
    args.out.write_text(render(args, found["machine"], found))


def measure_all(args: argparse.Namespace) -> dict:
    """Every section but the edge one: accuracy tables, onnxsim, speed, FLOPs, cost; plots written."""
    with tempfile.TemporaryDirectory(prefix="mi-compare-") as folder:
        saved = Path(folder)
        rows = accuracy_tables.accuracy_table(args.model, args.calib, args.data, args.samples, saved)
        return _beside_accuracy(args, rows, saved)


def measure_speed_sections(args: argparse.Namespace, rows: list[dict]) -> dict:
    """onnxsim, speed, FLOPs and cost, beside the stored accuracy rows: of those, the models that the speed
    comparison times are made again (`accuracy_tables.speed_models`) and their rows replaced."""
    with tempfile.TemporaryDirectory(prefix="mi-speed-") as folder:
        saved = Path(folder)
        fresh = {
            _run_key(row): row
            for row in accuracy_tables.speed_models(args.model, args.calib, args.data, args.samples, saved)
        }
        rows = [fresh.get(_run_key(row), row) for row in rows]
        return _beside_accuracy(args, rows, saved)


def _run_key(row: dict) -> tuple:
    return tuple(row[key] for key in ("granularity", "recovery", "keep", "method", "seed"))


def _beside_accuracy(args: argparse.Namespace, rows: list[dict], saved: Path) -> dict:
    """onnxsim, speed, FLOPs and cost measured beside the accuracy `rows`, whose speed models lie in `saved`."""
    machine = describe()
    RESULTS.mkdir(exist_ok=True)
    peers = accuracy_tables.onnxsim_table(args.model, args.calib, args.data, args.samples, saved)
    variants = build_variants(args.model, args.calib, args.data, args.samples, saved, rows, peers)
    points = measure_speed(variants, args.threads, args.runs)
    flops = flops_table(args.model, saved, points)
    costs = [accuracy_tables.compress_cost(args.model, args.calib, int(n)) for n in args.cost_samples.split(",")]
    original = next(p["accuracy"] for p in points if p["family"] == "original")
    found = {"machine": machine, "original_accuracy": original, "points": points, "flops": flops, "rows": rows}
    found.update(onnxsim=peers, costs=costs)
    plots.speed_figure(points, SEQ, RESULTS / "accuracy_vs_speedup.png")
    plots.size_figure(points, RESULTS / "accuracy_vs_size.png")
    return found


if __name__ == "__main__":
    main()
