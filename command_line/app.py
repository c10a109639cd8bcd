"""The `compress` command line. Every error a user can cause ends in one line on stderr and exit code 2.

`compress MODEL --keep 0.4` runs the default command (`run`); `compress inspect`, `compress eval` and
`compress bench` are the others. `main` is the one place that turns errors into that line: user errors
(`user_errors.UserError`), usage errors, and OS errors (exit 2); anything else is a bug, said so in one line
(exit 1), with the traceback only under `--debug`.
"""

from __future__ import annotations

import errno
import json
import sys
import traceback
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
from compressor.calibration import MIN_LENGTH
from compressor.default_model import default_model_path
from compressor.errors import CompressorError
from compressor.evaluation import evaluate_file
from compressor.output import workspace_beside, write_atomic, write_model, write_report
from compressor.paths import Named, check_outputs, model_file, model_inputs, plan_compress, tokenizer_inputs
from compressor.pipeline import DEFAULT_GRANULARITY, compress
from compressor.scoring import METHODS
from graph_passes import analyze, load_model, require_prunable
from graph_passes.summary import summarize
from user_errors import UserError, first_line

DEBUG_FLAG = "--debug"
BUG_REPORT = "please report it to the mi-compressor maintainers with the command you ran"
OS_HINTS = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some disk space or write elsewhere",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder; give a file",
}


def main(argv: list[str] | None = None) -> None:
    """The console entry point: `compress [--debug] ...` (`--debug` may stand anywhere)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    sys.exit(run_cli([a for a in args if a != DEBUG_FLAG], debug))


def run_cli(args: list[str], debug: bool = False) -> int:
    """Run one command; return its exit code, with any error already printed as one line."""
    try:
        code = typer.main.get_command(app).main(args=args, prog_name="compress", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except typer.exceptions.TyperException as exc:  # a usage error: unknown option, a value out of its range
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return _error(f"{first_line(message)} (see compress --help)")
    except typer.Abort:
        return _error("interrupted; no output was written", 130)
    except UserError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(describe_os_error(exc))
    except MemoryError:
        return _error("out of memory; use fewer --samples or a smaller --batch-size")
    except Exception as exc:  # a bug, not the user's doing: one line, the traceback on request
        if debug:
            traceback.print_exc()
        hint = "" if debug else f"; rerun with {DEBUG_FLAG} for the traceback"
        return _error(
            f"this is a bug in mi-compressor ({type(exc).__name__}: {first_line(exc)}); {BUG_REPORT}{hint}", 1
        )


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what, where, and the fix when there is a usual one."""
    where = f" {exc.filename}" if exc.filename else ""
    hint = OS_HINTS.get(exc.errno or 0)
    return f"cannot use{where}: {exc.strerror or first_line(exc)}" + (f"; {hint}" if hint else "")


def _error(message: str, code: int = 2) -> int:
    typer.echo(f"error: {message}", err=True)
    return code


class DefaultRun(TyperGroup):
    """A group whose first argument may be a model path: anything that is not a command name runs `run`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=DefaultRun, add_completion=False, help="Shrink exported transformer encoders in ONNX.")


def _columns(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    names = [c.strip() for c in value.split(",")]
    if not all(names):
        raise CompressorError(
            f"{option} takes names separated by commas, e.g. {option} sentence1,sentence2; got {value!r}"
        )
    return names


def _keep_range(value: float) -> float:
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{value:g} is not in (0, 1]; keep 0.4 keeps 40% of the prunable weights")
    return value


def _label(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise CompressorError("--label-column takes a column name; got an empty one")
    return value


ModelArg = Annotated[
    Path | None,
    typer.Argument(
        help="ONNX model, or a folder: an optimum export (model.onnx) or an ONNX Runtime GenAI model "
        "(genai_config.json); default: the embedded all-MiniLM-L6-v2"
    ),
]
TokenizerOpt = Annotated[Path | None, typer.Option(help="tokenizer folder; default: the model's folder")]
ColumnsOpt = Annotated[str | None, typer.Option(help="text column(s), comma separated; default: detected")]
LabelOpt = Annotated[str | None, typer.Option(help="label column; default: 'label' when present")]
MaxLengthOpt = Annotated[int, typer.Option(min=MIN_LENGTH, help="truncate tokenized samples to this many tokens")]


@app.command()
def run(
    model: ModelArg = None,
    keep: Annotated[
        float,
        typer.Option(callback=_keep_range, help="fraction of the encoder's prunable weights to keep, in (0, 1]"),
    ] = 0.4,
    calib: Annotated[
        Path | None, typer.Option(help="calibration data: .tsv, .csv, .jsonl or .npz; for a decoder also .txt")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="output .onnx file, or a folder (a GenAI folder from a GenAI one); default: MODEL.keepK.onnx"
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="report path; default: beside the output")] = None,
    method: Annotated[str, typer.Option(help=f"unit scoring: {', '.join(METHODS)}")] = "mi",
    granularity: Annotated[str, typer.Option(help=f"what to prune, from {', '.join(GRANULARITIES)}")] = ",".join(
        DEFAULT_GRANULARITY
    ),
    samples: Annotated[int, typer.Option(min=1, help="calibration samples to use")] = 512,
    max_length: MaxLengthOpt = 128,
    tokenizer: TokenizerOpt = None,
    text_columns: ColumnsOpt = None,
    label_column: LabelOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="samples per ONNX Runtime run")] = 32,
    seed: Annotated[
        int,
        typer.Option(
            min=0, help="seed for the calibration rows drawn from a text file, the held-out split and --method random"
        ),
    ] = 0,
    recover: Annotated[
        bool, typer.Option("--recover/--no-recover", help="refit the projections after pruned units by least squares")
    ] = True,
    refit_inputs: Annotated[
        str | None,
        typer.Option(
            help="recovery fits on the activations of the 'original' model or of the 'pruned' one, or ('stream') on "
            "the pruned one's against the original stream after each residual add (mi then chooses each layer's units "
            "again as it is reached); default: stream, but original for an encoder whose hidden stream is pruned and "
            "for a model whose layers share weights"
        ),
    ] = None,
    allocation: Annotated[
        str | None,
        typer.Option(
            help="'global': layers keep different numbers of heads and neurons, where they lose least (mi only); "
            "'uniform': the same share in every layer; default: global for --method mi on an encoder whose hidden "
            "stream stays whole, uniform otherwise"
        ),
    ] = None,
    optimize: Annotated[
        bool, typer.Option("--optimize", help="fuse with ONNX Runtime's transformer optimizer when it is faster")
    ] = False,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="after pruning and recovery, quantize: int8 (ONNX Runtime dynamic, per channel) or int4 "
            "(MatMulNBits, blocks of 32, symmetric)"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress, no summary (warnings still print)")] = False,
) -> None:
    """Compress MODEL into a smaller dense ONNX model that keeps KEEP of its encoder weights."""
    path = model_file(model) if model else default_model_path()
    folder = tokenizer or path.parent
    inputs = [*model_inputs(path), *tokenizer_inputs(folder), *([Named("--calib", calib)] if calib else [])]
    paths = plan_compress(path, out, report, keep, inputs)
    with workspace_beside(paths.model_file) as workspace:  # sliced weights, until the output holds them
        result = compress(
            path,
            calib,
            keep=keep,
            method=method,
            granularity=_columns(granularity, "--granularity") or [],
            samples=samples,
            max_length=max_length,
            tokenizer=tokenizer,
            text_columns=_columns(text_columns, "--text-columns"),
            label_column=_label(label_column),
            batch_size=batch_size,
            seed=seed,
            recover=recover,
            refit_inputs=refit_inputs,
            allocation=allocation,
            optimize=optimize,
            quantize=quantize,
            quiet=quiet,
            workspace=workspace,
        )
        write_model(result.model, paths, path, result.report)
    result.report.update(model=str(path), output=str(paths.model_file))
    write_report(result.report, paths.report_file)
    if not quiet:
        _print_report(result.report, paths.report_file)


@app.command("eval")
def eval_command(
    model: ModelArg = None,
    data: Annotated[
        Path | None, typer.Option(help="labelled .tsv, .csv or .jsonl file; for a decoder, text (.txt, .jsonl...)")
    ] = None,
    tokenizer: TokenizerOpt = None,
    text_columns: ColumnsOpt = None,
    label_column: LabelOpt = None,
    max_length: MaxLengthOpt = 128,
    stride: Annotated[
        int | None, typer.Option(min=1, help="decoders: a perplexity window every STRIDE tokens; default --max-length")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Accuracy and F1 (classes) or Pearson and Spearman (scores) of MODEL on labelled data; perplexity of a decoder
    on text."""
    if data is None:
        raise CompressorError("give the data with --data FILE (labelled; for a decoder, text)")
    if stride is not None and stride > max_length:
        raise CompressorError(f"--stride {stride} is longer than --max-length {max_length}; windows would skip tokens")
    path = model_file(model) if model else default_model_path()
    metrics = evaluate_file(
        load_model(path, referenced=True),
        data,
        tokenizer or path.parent,
        _columns(text_columns, "--text-columns"),
        _label(label_column),
        max_length,
        stride=stride,
    )
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
    threads: Annotated[
        str, typer.Option(help="intra-op thread counts to sweep, comma separated; 0: ONNX Runtime's default")
    ] = "0",
    warmup: Annotated[int, typer.Option(min=0, help="untimed runs per model before timing")] = 3,
    runs: Annotated[int, typer.Option(min=1, help="timed runs per model and setting")] = 20,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="peak RSS of a fresh process per row")] = True,
    new_tokens: Annotated[
        int, typer.Option(min=2, help="decoders: tokens to generate per sequence for the decode rows")
    ] = 32,
    data: Annotated[Path | None, typer.Option(help="labelled file: adds accuracy (measured on CPU)")] = None,
    tokenizer: TokenizerOpt = None,
    text_columns: ColumnsOpt = None,
    label_column: LabelOpt = None,
    max_length: MaxLengthOpt = 128,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the results as JSON")] = None,
    markdown_file: Annotated[Path | None, typer.Option("--markdown", help="also write a Markdown table")] = None,
) -> None:
    """Latency p50/p90/p99, throughput, peak memory, size and accuracy of MODELS, interleaved on each provider."""
    models = [model_file(m) for m in models]
    inputs = [named for m in models for named in model_inputs(m)] + ([Named("--data", data)] if data else [])
    outputs = [Named(option, p) for option, p in (("--json", json_file), ("--markdown", markdown_file)) if p]
    check_outputs(outputs, inputs + [n for m in models for n in tokenizer_inputs(tokenizer or m.parent)])
    settings = Settings(
        parse_providers(providers),
        _positive_ints("--batch", batch),
        _positive_ints("--seq", seq),
        _counts("--threads", threads, lowest=0),
        warmup,
        runs,
        memory,
        new_tokens,
    )
    accuracy = None
    if data is not None:
        columns = _columns(text_columns, "--text-columns")
        accuracy = {
            m: evaluate_file(
                load_model(m, referenced=True), data, tokenizer or m.parent, columns, _label(label_column), max_length
            )
            for m in models
        }
    result = run_bench(models, settings, accuracy)
    print_table(result)
    if json_file:
        write_atomic(json_file, as_json(result).encode())
    if markdown_file:
        write_atomic(markdown_file, markdown(result).encode())


def _positive_ints(option: str, value: str) -> list[int]:
    return _counts(option, value, lowest=1)


def _counts(option: str, value: str, lowest: int) -> list[int]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= lowest for p in parts):
        kind = "positive integers" if lowest == 1 else f"integers of at least {lowest}"
        raise BenchError(f"{option} takes {kind} separated by commas, e.g. {option} 1,2,4; got {value!r}")
    return list(dict.fromkeys(int(p) for p in parts))


@app.command()
def inspect(
    model: ModelArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")] = False,
) -> None:
    """Print the channel groups that can shrink together, and every part that cannot be pruned through."""
    path = model_file(model) if model else default_model_path()
    analysis = analyze(load_model(path, referenced=True))
    require_prunable(analysis)
    summary = {"model": str(path), **summarize(analysis)}
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
    agreement, embedding = fid["prediction_agreement"], fid.get("embedding_cosine")
    return (
        f"mean cosine {fid['mean_cosine']:.3f}"
        + (f", prediction agreement {agreement:.3f}" if agreement is not None else "")
        + (f", sentence embedding cosine {embedding:.3f}" if embedding is not None else "")
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
