"""The `compress` command line. Every error a user can cause ends in one line on stderr and exit code 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from compressor.default_model import DefaultModelError, default_model_path
from graph_passes import GraphPassError, analyze, load_model, require_prunable
from graph_passes.summary import summarize

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Shrink exported transformer encoders in ONNX.")
USER_ERRORS = (GraphPassError, DefaultModelError)


@app.callback()
def main() -> None:
    """Shrink exported transformer encoders in ONNX."""


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def inspect(
    model: Annotated[Path | None, typer.Argument(help="ONNX model; default: the embedded all-MiniLM-L6-v2")] = None,
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
            g["name"], g["kind"], "-" if g["layer"] is None else str(g["layer"]), f"{g['units']} x {g['unit_width']}",
            f"{g['parameters']:,}", "yes" if g["prunable"] else "no", "\n".join(parts),
        )
    console.print(table)
    blockers = summary["cannot_prune_through"]
    if blockers:
        console.print(f"cannot prune through ({len(blockers)}):")
        for b in blockers:
            console.print(f"  {b['op_type']} node {b['node']!r}: {b['reason']}", markup=False)
    else:
        console.print("every operator on a channel path has a pruning rule")
