"""The architecture table: for each model type of the architecture sweep (tests/tiny_zoo.py: tiny random models
exported by optimum as a new user would), what `compress` finds and does at keep 0.5, beside onnxsim 0.8.1's
structured pruning (attention heads and FFN neurons, Wanda-scored, then its ridge refit) on the same exports, plain
and fused by ONNX Runtime's transformer optimizer (model type bert, as bench/onnxsim_baseline.py calls it).

    python -m bench.compare --only architectures ...
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from bench.workload import parameter_count
from graph_passes import analyze, load_model

ROOT = Path(__file__).resolve().parents[1]
KEEP = 0.5
BATCH = 4  # calibration batches fed to onnxsim: the zoo's 12 samples in 3 batches


def _zoo():
    """The sweep's zoo itself, so that the table and the test measure the same models."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_zoo

    return tiny_zoo


def architecture_rows() -> list[dict]:
    zoo = _zoo()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mi-architectures-") as root:
        for entry in zoo.ZOO:
            folder = Path(root) / entry.model_type
            folder.mkdir()
            rows.append(_row(entry.model_type, entry.kind, zoo.export(copy.deepcopy(entry), folder)))
            print(json.dumps({"architecture": rows[-1]}), file=sys.stderr, flush=True)
    return rows


def _row(model_type: str, kind: str, path: Path) -> dict:
    calib = path.parent / "calib.npz"
    row = {"model_type": model_type, "kind": kind, **_groups(path)}
    row["compress"] = _compress(path, calib)
    arrays = dict(np.load(calib))
    batches = [
        {k: v[i : i + BATCH] for k, v in arrays.items()} for i in range(0, len(next(iter(arrays.values()))), BATCH)
    ]
    row["onnxsim"] = _onnxsim(onnx.load(path), batches)
    fused = _fused(path)
    if isinstance(fused, str):
        row["compress_fused"] = row["onnxsim_fused"] = {"outcome": fused}
        return row
    fused_path = path.with_name("fused.onnx")
    onnx.save(fused, fused_path)
    row["compress_fused"] = _compress(fused_path, calib)
    row["onnxsim_fused"] = _onnxsim(fused, batches)
    return row


def _groups(path: Path) -> dict:
    """Prunable head, FFN and hidden groups, and the share of linear weight parameters that one of them slices."""
    try:
        analysis = analyze(load_model(path))
    except Exception as exc:  # noqa: BLE001 - the table records whatever the analysis says
        return {"groups": None, "analysis_error": _line(exc)}
    prunable = [g for g in analysis.groups if g.prunable and g.kind in ("heads", "ffn", "hidden")]
    sizes = {w.weight: int(np.prod(analysis.values[w.weight].shape)) for w in analysis.linears}
    reached = {w for g in prunable for w in g.readers + g.writers}
    return {
        "groups": {kind: sum(g.kind == kind for g in prunable) for kind in ("heads", "ffn", "hidden")},
        "linear_fraction": sum(sizes[w] for w in reached if w in sizes) / max(sum(sizes.values()), 1),
    }


def _compress(path: Path, calib: Path) -> dict:
    """`compress MODEL --keep 0.5 --calib calib.npz` in a fresh process: the kept fraction and fidelity, or the
    one line it refused with."""
    command = [sys.executable, "-m", "command_line", str(path), "--keep", str(KEEP), "--calib", str(calib)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        return {"outcome": "refused" if done.returncode == 2 else "failed", "reason": _last_line(done.stderr)}
    report = json.loads(path.with_name(f"{path.stem}.keep{KEEP}.report.json").read_text())
    return {"outcome": "pruned", "keep": report["keep_achieved"], "cosine": report["fidelity"]["mean_cosine"]}


def _fused(path: Path) -> onnx.ModelProto | str:
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        return optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0).model
    except Exception as exc:  # noqa: BLE001 - what the fusion does with a model type is the measurement
        return f"fusion failed: {_line(exc)}"


def _onnxsim(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]]) -> dict:
    """onnxsim's heads then FFN pruning at sparsity 0.5 and its refit; the share of linear weights it removed, and
    whether ONNX Runtime runs its output on a calibration batch."""
    from onnxsim.finetune import apply_pruning_finetune
    from onnxsim.pruning import apply_attention_head_wanda_pruning, apply_structured_wanda_pruning

    try:
        pruned = apply_attention_head_wanda_pruning(model, calibration_data=batches, sparsity=1 - KEEP)
        pruned = apply_structured_wanda_pruning(pruned, calibration_data=batches, sparsity=1 - KEEP)
        refit = apply_pruning_finetune(model, pruned, calibration_data=batches)
    except Exception as exc:  # noqa: BLE001 - onnxsim's own errors are the measurement
        return {"outcome": "error", "reason": _line(exc)}
    removed = (parameter_count(model) - parameter_count(refit)) / max(_linear_parameters(model), 1)
    problem = _runs(refit, batches[0])
    result = {"outcome": "ran" if problem is None else "broken", "removed": removed}
    return result if problem is None else result | {"reason": problem}


def _linear_parameters(model: onnx.ModelProto) -> int:
    weights = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 2}
    used = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1}
    return sum(size for name, size in weights.items() if name in used)


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> str | None:
    """None when ONNX Runtime loads and runs the model; else its first line of complaint."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        missing = names - set(feeds)
        if missing:
            return f"needs inputs the calibration does not have: {min(missing)}"
        session.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for one cause: it does not run
        return _line(exc)
    return None


def _line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:160]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ")[:160] if lines else ""


def architecture_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "## Architectures: what compress and onnxsim do with each model type",
        "",
        (
            "The architecture sweep's zoo (`tests/tiny_zoo.py`: tiny random models, 2 layers, hidden 32, 4 heads, "
            "exported by optimum at opset 17 with the default task of their kind; Whisper's encoder), each pruned to "
            f"keep {KEEP} by `compress` (random-input `.npz` calibration, 12 samples) and by onnxsim 0.8.1 (attention "
            "heads then FFN neurons at sparsity 0.5, Wanda-scored, then its ridge refit, fed the same samples), on the "
            "optimum export and on its form fused by ONNX Runtime's transformer optimizer (model type bert). Groups: "
            "prunable heads / FFN groups and whether the hidden stream is one; reach: the share of linear weight "
            "parameters that one of those groups slices. onnxsim: the share of linear weight parameters it removed, and "
            "whether ONNX Runtime runs its output. Both get the same calibration file; `compress` supplies a "
            "decoder's position ids and empty cache itself, onnxsim asks for them in the file."
        ),
        "",
        "| model type | groups (heads / FFN / hidden) | reach | compress | compress, fused | onnxsim | onnxsim, fused |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_markdown_row(row) for row in rows]
    return lines + ["", _summary(rows), ""]


def _summary(rows: list[dict]) -> str:
    """How many model types each tool pruned to a model that runs."""

    def count(key: str, outcome: str) -> int:
        return sum(row[key]["outcome"] == outcome for row in rows)

    plain = [row["onnxsim"]["removed"] for row in rows if row["onnxsim"]["outcome"] == "ran"]
    return (
        f"Of {len(rows)} model types, `compress` pruned {count('compress', 'pruned')} to keep {KEEP} "
        f"({count('compress_fused', 'pruned')} in their fused form) and refused the others in one line. onnxsim ran "
        f"on {len(plain)} plain exports and removed at most {max(plain, default=0):.0%} of their linear weights; on "
        f"the fused forms its output runs for {count('onnxsim_fused', 'ran')}, does not run for "
        f"{count('onnxsim_fused', 'broken')}, and it stopped with an error on {count('onnxsim_fused', 'error')}."
    )


def _markdown_row(row: dict) -> str:
    groups = row["groups"]
    found = "analysis failed" if groups is None else f"{groups['heads']} / {groups['ffn']} / {groups['hidden']}"
    reach = "-" if groups is None else f"{row['linear_fraction']:.0%}"
    cells = [
        row["model_type"],
        found,
        reach,
        _ours(row["compress"]),
        _ours(row["compress_fused"]),
        _theirs(row["onnxsim"]),
        _theirs(row["onnxsim_fused"]),
    ]
    return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"


def _ours(result: dict) -> str:
    if result["outcome"] == "pruned":
        return f"kept {result['keep']:.2f}, cosine {result['cosine']:.3f}"
    return f"{result['outcome']}: {result.get('reason', '')}"


def _theirs(result: dict) -> str:
    if result["outcome"] in ("ran", "broken"):
        runs = "runs" if result["outcome"] == "ran" else f"does not run ({result['reason']})"
        return f"removed {result['removed']:.0%}, {runs}"
    return f"{result['outcome']}: {result.get('reason', '')}"
