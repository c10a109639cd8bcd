"""The `compress` command line. Every error a user can cause ends in one line on stderr and exit code 2.

`compress MODEL --keep 0.4` runs the default command (`run`); `compress inspect`, `compress eval` and
`compress bench` are the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from bench.deployment import Settings, run_bench
from bench.errors import BenchError
from bench.providers import parse_providers
from bench.tables import as_json, markdown, print_table
from compressor.budget import GRANULARITIES
from compressor.default_model import DefaultModelError, default_model_path
from compressor.evaluation import evaluate_file
from compressor.output import plan_outputs, write_atomic, write_model, write_report
from compressor.pipeline import DEFAULT_GRANULARITY, compress
from compressor.scoring import METHODS
from graph_passes import GraphPassError, analyze, load_model, require_prunable
from graph_passes.summary import summarize

USER_ERRORS = (GraphPassError, DefaultModelError)


class DefaultRun(TyperGroup):
    """A group whose first argument may be a model path: anything that is not a command name runs `run`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=DefaultRun, add_completion=False, help="Shrink exported transformer encoders in ONNX.")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _columns(value: str | None) -> list[str] | None:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


ModelArg = Annotated[Path | None, typer.Argument(help="ONNX model; default: the embedded all-MiniLM-L6-v2")]
TokenizerOpt = Annotated[Path | None, typer.Option(help="tokenizer folder; default: the model's folder")]
ColumnsOpt = Annotated[str | None, typer.Option(help="text column(s), comma separated; default: detected")]
LabelOpt = Annotated[str | None, typer.Option(help="label column; default: 'label' when present")]
MaxLengthOpt = Annotated[int, typer.Option(help="truncate tokenized samples to this many tokens")]


@app.command()
def run(
    model: ModelArg = None,
    keep: Annotated[float, typer.Option(help="fraction of the encoder's prunable weights to keep, in (0, 1]")] = 0.4,
    calib: Annotated[Path | None, typer.Option(help="calibration data: .tsv, .csv, .jsonl or .npz")] = None,
    out: Annotated[Path | None, typer.Option(help="output .onnx file, or a folder; default: MODEL.keepK.onnx")] = None,
    report: Annotated[Path | None, typer.Option(help="report path; default: beside the output")] = None,
    method: Annotated[str, typer.Option(help=f"unit scoring: {', '.join(METHODS)}")] = "mi",
    granularity: Annotated[str, typer.Option(help=f"what to prune, from {', '.join(GRANULARITIES)}")] = ",".join(
        DEFAULT_GRANULARITY
    ),
    samples: Annotated[int, typer.Option(help="calibration samples to use")] = 512,
    max_length: MaxLengthOpt = 128,
    tokenizer: TokenizerOpt = None,
    text_columns: ColumnsOpt = None,
    label_column: LabelOpt = None,
    batch_size: Annotated[int, typer.Option(help="samples per ONNX Runtime run")] = 32,
    seed: Annotated[
        int,
        typer.Option(
            help="seed for the calibration rows drawn from a text file, the held-out split and --method random"
        ),
    ] = 0,
    recover: Annotated[
        bool, typer.Option("--recover/--no-recover", help="refit the projections after pruned units by least squares")
    ] = True,
    refit_inputs: Annotated[
        str, typer.Option(help="recovery fits on the activations of the 'original' model or of the 'pruned' one")
    ] = "original",
    optimize: Annotated[
        bool, typer.Option("--optimize", help="fuse with ONNX Runtime's transformer optimizer when it is not slower")
    ] = False,
    quantize: Annotated[
        str | None, typer.Option(help="after pruning and recovery, quantize: int8 (ONNX Runtime dynamic, per channel)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress, no summary")] = False,
) -> None:
    """Compress MODEL into a smaller dense ONNX model that keeps KEEP of its encoder weights."""
    try:
        path = model or default_model_path()
        model_file, report_file = plan_outputs(path, out, report, keep)
        result = compress(
            path,
            calib,
            keep=keep,
            method=method,
            granularity=_columns(granularity) or [],
            samples=samples,
            max_length=max_length,
            tokenizer=tokenizer,
            text_columns=_columns(text_columns),
            label_column=label_column,
            batch_size=batch_size,
            seed=seed,
            recover=recover,
            refit_inputs=refit_inputs,
            optimize=optimize,
            quantize=quantize,
            quiet=quiet,
        )
    except USER_ERRORS as exc:
        fail(str(exc))
    write_model(result.model, model_file, path)
    result.report.update(model=str(path), output=str(model_file))
    write_report(result.report, report_file)
    if not quiet:
        _print_report(result.report, report_file)


@app.command("eval")
def eval_command(
    model: ModelArg = None,
    data: Annotated[Path | None, typer.Option(help="labelled .tsv, .csv or .jsonl file")] = None,
    tokenizer: TokenizerOpt = None,
    text_columns: ColumnsOpt = None,
    label_column: LabelOpt = None,
    max_length: MaxLengthOpt = 128,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Accuracy and F1 (classes) or Pearson and Spearman (scores) of MODEL on labelled data."""
    if data is None:
        fail("give the labelled data with --data FILE")
    try:
        path = model or default_model_path()
        metrics = evaluate_file(
            load_model(path), data, tokenizer or path.parent, _columns(text_columns), label_column, max_length
        )
    except USER_ERRORS as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        typer.echo(
            " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if v is not None
            )
        )


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX models; the first is the baseline of every speedup")],
    providers: Annotated[
        str | None, typer.Option(help="execution providers, e.g. cpu,cuda,tensorrt; default: cpu and any GPU one")
    ] = None,
    batch: Annotated[str, typer.Option(help="batch sizes, comma separated")] = "1,8,32",
    seq: Annotated[str, typer.Option(help="sequence lengths, comma separated")] = "32,128",
    threads: Annotated[int, typer.Option(help="intra-op threads; 0: ONNX Runtime's default")] = 0,
    warmup: Annotated[int, typer.Option(help="untimed runs per model before timing")] = 3,
    runs: Annotated[int, typer.Option(help="timed runs per model and setting")] = 20,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="peak RSS of a fresh process per row")] = True,
    data: Annotated[Path | None, typer.Option(help="labelled file: adds accuracy (measured on CPU)")] = None,
    tokenizer: TokenizerOpt = None,
    text_columns: ColumnsOpt = None,
    label_column: LabelOpt = None,
    max_length: MaxLengthOpt = 128,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the results as JSON")] = None,
    markdown_file: Annotated[Path | None, typer.Option("--markdown", help="also write a Markdown table")] = None,
) -> None:
    """Latency p50/p90/p99, throughput, peak memory, size and accuracy of MODELS, interleaved on each provider."""
    try:
        if threads < 0 or warmup < 0 or runs < 1:
            raise BenchError("--threads and --warmup take zero or more, --runs at least 1")
        settings = Settings(
            parse_providers(providers),
            _positive_ints("--batch", batch),
            _positive_ints("--seq", seq),
            threads,
            warmup,
            runs,
            memory,
        )
        accuracy = None
        if data is not None:
            columns = _columns(text_columns)
            accuracy = {
                m: evaluate_file(load_model(m), data, tokenizer or m.parent, columns, label_column, max_length)
                for m in models
            }
        result = run_bench(models, settings, accuracy)
    except USER_ERRORS as exc:
        fail(str(exc))
    print_table(result)
    if json_file:
        write_atomic(json_file, as_json(result).encode())
    if markdown_file:
        write_atomic(markdown_file, markdown(result).encode())


def _positive_ints(option: str, value: str) -> list[int]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise BenchError(f"{option} takes positive integers separated by commas, e.g. {option} 1,8,32; got {value!r}")
    return list(dict.fromkeys(int(p) for p in parts))


@app.command()
def inspect(
    model: ModelArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")] = False,
) -> None:
    """Print the channel groups that can shrink together, and every part that cannot be pruned through."""
    try:
        path = model or default_model_path()
        analysis = analyze(load_model(path))
        require_prunable(analysis)
        summary = {"model": str(path), **summarize(analysis)}
    except USER_ERRORS as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary)


def _print_report(report: dict, report_file: Path) -> None:
    console = Console(file=sys.stdout, width=120)
    heads = [g["units_after"] for g in report["groups"] if g["kind"] == "heads"]
    ffn = [g["units_after"] for g in report["groups"] if g["kind"] == "ffn"]
    hidden = [g["units_after"] for g in report["groups"] if g["kind"] == "hidden"]
    weights, size, fid = report["encoder_weights"], report["file_bytes"], report["fidelity"]
    lines = [
        f"wrote {report['output']} ({size['after'] / 1e6:.1f} MB, was {size['before'] / 1e6:.1f} MB)",
        f"encoder weights kept: {report['keep_achieved']:.3f} ({weights['after']:,} of {weights['before']:,}); "
        f"method {report['method']}, top signal {report['top_signal'] or '-'}",
        f"heads per layer: {heads}   FFN neurons per layer: {ffn}" + (f"   hidden: {hidden[0]}" if hidden else ""),
        f"fidelity on {fid['samples']} held-out samples: {_fidelity_text(fid)}",
        *_recovery_lines(report),
        *_optimization_lines(report),
        *(
            [f"{report['quantization']['type']}: {_fidelity_text(report['quantization']['fidelity'])} (float above)"]
            if report["quantization"]
            else []
        ),
        f"time: {sum(report['seconds'].values()):.1f} s ("
        + ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items())
        + ")",
        f"report: {report_file}",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _fidelity_text(fid: dict) -> str:
    agreement = fid["prediction_agreement"]
    return f"mean cosine {fid['mean_cosine']:.3f}" + (
        f", prediction agreement {agreement:.3f}" if agreement is not None else ""
    )


def _recovery_lines(report: dict) -> list[str]:
    recovery = report["recovery"]
    if recovery is None:
        return ["recovery: off (--no-recover)"]
    refits = recovery["projections"]
    if not recovery["kept"]:
        return [f"recovery: not kept (the refit {len(refits)} projections did not bring the outputs closer)"]
    applied = sum(r["applied"] for r in refits)
    return [
        f"recovery: refit {applied} of {len(refits)} projections by least squares; "
        f"without it: {_fidelity_text(report['fidelity']['without_recovery'])}"
    ]


def _optimization_lines(report: dict) -> list[str]:
    found = report["optimization"]
    if found is None:
        return []
    fused = ", ".join(f"{n} {op}" for op, n in found["fused_ops"].items()) or "nothing"
    verdict = "kept" if found["applied"] else "not kept"
    timing = found.get("p50_ms")
    speed = f"; p50 {timing['unfused']:.1f} -> {timing['fused']:.1f} ms" if timing else ""
    return [f"optimize: fused {fused}; {verdict}: {found['reason']}{speed}"]


def _print_summary(summary: dict) -> None:
    console = Console(file=sys.stdout, width=160)
    table = Table(title=f"channel groups of {summary['model']}")
    for column in ("group", "kind", "layer", "units x width", "params", "prunable", "what belongs to it"):
        table.add_column(column)
    for g in summary["groups"]:
        parts = [f"writes: {', '.join(g['writers']) or '-'}", f"reads: {', '.join(g['readers']) or '-'}"]
        if g["other_parameters"]:
            parts.append(f"also: {len(g['other_parameters'])} bias/norm/embedding tensors")
        if g["interface"]:
            parts.append(f"reaches model output {', '.join(g['interface'])}")
        table.add_row(
            g["name"],
            g["kind"],
            "-" if g["layer"] is None else str(g["layer"]),
            f"{g['units']} x {g['unit_width']}",
            f"{g['parameters']:,}",
            "yes" if g["prunable"] else "no",
            "\n".join(parts),
        )
    console.print(table)
    blockers = summary["cannot_prune_through"]
    if blockers:
        console.print(f"cannot prune through ({len(blockers)}):")
        for b in blockers:
            console.print(f"  {b['op_type']} node {b['node']!r}: {b['reason']}", markup=False)
    else:
        console.print("every operator on a channel path has a pruning rule")
