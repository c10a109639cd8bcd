"""`compress`: calibration -> capture -> scoring -> masks -> smaller dense model -> validation and fidelity.

The Python API of the product; the CLI is a thin layer over it.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import onnx

from compressor import budget, fidelity, optimization, recovery, scoring
from compressor import calibration as calib
from compressor.capture import capture, capture_names, capture_passes, layered, plan_capture
from compressor.decoder import declared_shapes, fit_empty_caches
from compressor.errors import CompressorError
from compressor.paths import model_file
from compressor.progress import Reporter
from compressor.quantization import (
    QUANTIZE_TYPES,
    back_to_int4,
    refuse_quantized,
    whole_blocks,
)
from compressor.quantization import (
    quantize as quantized,
)
from graph_passes import GraphAnalysis, analyze, apply_masks, load_model, require_prunable
from graph_passes.dead_nodes import drop_dead_nodes
from graph_passes.external_data import DataFile, materialize_in_place, model_bytes
from graph_passes.flops import matmul_flops_per_token
from graph_passes.quantized_weights import float_view
from graph_passes.sessions import check_model, map_large_allocations, return_freed_memory
from user_errors import first_line

DEFAULT_GRANULARITY = ("heads", "ffn")
HOLDOUT_MAX = 128
SLICED_DATA = "sliced.onnx.data"  # in the workspace


@dataclass
class CompressionResult:
    model: onnx.ModelProto
    report: dict
    masks: dict[str, np.ndarray] = field(repr=False)


@dataclass
class Timer:
    """Seconds per stage, and the process's peak resident memory (GB) when each stage ended, in the order they
    ended: a stage that runs twice (the FLOPs probe, before capture and after pruning) sums its seconds and takes
    its place where it last ended (its peak then covers the stages before it, which the first run was one of)."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_gb: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - start, 3)
        self.peak_rss_gb.pop(name, None)
        self.peak_rss_gb[name] = peak_rss_gb()
        return now


def peak_rss_gb() -> float:
    """The peak resident memory of this process so far (Linux reports it in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def compress(
    model: str | Path | onnx.ModelProto,
    calibration: str | Path | Sequence[str] | Mapping[str, np.ndarray] | None = None,
    keep: float = 0.4,
    method: str = "mi",
    granularity: Sequence[str] = DEFAULT_GRANULARITY,
    samples: int = 512,
    max_length: int = 128,
    tokenizer: str | Path | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    batch_size: int = 32,
    seed: int = 0,
    recover: bool = True,
    refit_inputs: str | None = None,
    allocation: str | None = None,
    optimize: bool = False,
    quantize: str | None = None,
    quiet: bool = True,
    workspace: str | Path | None = None,
) -> CompressionResult:
    """Prune `model` to keep `keep` of its encoder's prunable weights; return the model and its report.

    `calibration` is a file (.tsv/.csv/.jsonl/.npz), a list of texts, a dict of input arrays, or None for a synthetic
    fallback (with a warning). The tokenizer defaults to the model's folder. With `recover`, the projections that read
    pruned units are refit by least squares on the calibration activations (`compressor.recovery`), fed with the
    original model's activations (`refit_inputs="original"`), the pruned model's (`"pruned"`), or the pruned model's
    against the original stream after each residual add (`"stream"`: each refit also makes up for the error of the
    layers below); the default is `default_refit_inputs`. With the hidden stream pruned, its readers (Q, K, V, FFN
    up, a pooler) are refit too, and the stream keeps `budget.stream_share(keep)` of its channels (0.9 at keep 0.4),
    the heads and neurons taking the rest. `allocation="global"` (the default for `method="mi"` on an encoder whose
    hidden stream stays whole) lets layers keep different numbers of heads and neurons, chosen by their losses
    (`scoring.mi_masks`); `"uniform"` keeps the same share in every layer. `optimize` then applies ONNX
    Runtime's transformer fusion when the fused model agrees and is faster (`compressor.optimization`), and
    `quantize="int8"` quantizes the result (ONNX Runtime dynamic int8, per channel), `quantize="int4"` to MatMulNBits
    (`compressor.quantization`); the report gives the fidelity of the float and of the quantized model. `seed`
    draws the calibration rows from a file that has more than `samples` (and the synthetic fallback's), splits off
    the held-out samples and seeds `method="random"`. `workspace`: a folder that receives the sliced weights of a
    model whose weights lie in external data files, so that they are not held in memory (the returned model then
    refers to them there, and to the input's files for the weights left whole; the command line writes it, then
    removes the folder), capture's moments when they are too many for one pass (`capture.capture_passes`), and the
    original's outputs that recovery and fidelity compare with (`fidelity.Reference`). Without it the returned model
    holds all its weights, and those files go to the system's temporary folder.
    """
    reporter = Reporter(quiet)
    timer = Timer()
    start = time.perf_counter()
    map_large_allocations()  # large arrays come and go through every stage: freed, they leave the process
    if refit_inputs is not None and refit_inputs not in recovery.REFIT_INPUTS:
        raise CompressorError(
            f"unknown --refit-inputs {refit_inputs!r}; choose from {', '.join(recovery.REFIT_INPUTS)}"
        )
    if method not in scoring.METHODS:
        raise CompressorError(f"unknown --method {method!r}; choose from {', '.join(scoring.METHODS)}")
    if allocation is not None:
        check_allocation(allocation, method)
    if not 0 < keep <= 1:
        raise budget.BudgetError(f"--keep must be in (0, 1]; got {keep}")
    if quantize is not None and quantize not in QUANTIZE_TYPES:
        raise CompressorError(f"unknown --quantize {quantize!r}; choose from {', '.join(QUANTIZE_TYPES)}")
    check_counts(samples=samples, batch_size=batch_size, max_length=max_length, seed=seed)
    path = None if isinstance(model, onnx.ModelProto) else model_file(Path(model))
    source = model if path is None else load_model(path, referenced=True)
    refuse_quantized(source)
    quantized_source, source = source, float_view(source)  # an int4 input is scored and refit in float
    int4_input = quantized_source is not source
    if int4_input and (quantize or optimize):
        raise CompressorError("the input model is already int4 (MatMulNBits); drop --quantize and --optimize")
    folder = None if path is None else path.parent
    start = timer.stage("load", start)
    analysis = analyze(source)
    source = analysis.model  # the same function, normalised: the model read from disk is not held twice
    quantized_source = quantized_source if int4_input else source
    require_prunable(analysis)
    counts = budget.allocate(analysis, keep, tuple(granularity), budget.stream_share(keep))
    start = timer.stage("analyze", start)
    data = _calibration(
        calibration,
        source,
        Path(tokenizer) if tokenizer else folder,
        text_columns,
        label_column,
        samples,
        max_length,
        seed,
        reporter,
        analysis.values,
    )
    scored, held_out = split(len(data), seed)
    refit_inputs = refit_inputs or default_refit_inputs(analysis, data, granularity)
    allocation = allocation or default_allocation(method, data, granularity)
    start = timer.stage("calibration", start)
    # FLOPs are probed (a session with every tensor exposed) where they add least to the peak: here for the original,
    # after pruning for the sliced model (refits change no shape); after fidelity they set minilm-sst2's (+170 MB)
    flops_before, sequence_length = flops_per_token(analysis.model, data, held_out)
    start = timer.stage("flops", start)
    stats = None
    reselect = method == "mi" and not int4_input  # an int4 input's masks keep whole quantization blocks
    rechosen = reselect and recover and refit_inputs == "stream"  # recovery chooses the units again
    counted = _chosen_in_recovery(analysis, counts) if rechosen and allocation == "uniform" else None
    captured = method in ("mi", "wanda") and counted is None
    exposed = exposed_names(analysis, captured, recover and refit_inputs == "original")
    session = None  # of the whole original, released before scoring, whose float64 products need room
    if captured:
        cross = "hidden" in granularity
        passes = len(capture_passes(analysis, cross))  # over one, capture runs a group of layers at a time
        session = fidelity.session(source, exposed) if passes == 1 else None
        with reporter.stage("capturing activations", len(scored) * passes) as advance:
            stats = capture(analysis, data, data.by_length(scored), batch_size, advance, session, cross, workspace)
    if counted is None:
        start = timer.stage("capture", start)
    checked, refits_checked = _references(
        analysis, source, session, data, scored, held_out, batch_size, recover, workspace
    )
    del session
    return_freed_memory()
    start = timer.stage("reference", start)
    written = DataFile(Path(workspace) / SLICED_DATA) if workspace else None  # sliced and refit weights
    masks, signal, pruned, flops_after = counted, "stream", None, None  # recovery chooses and slices
    if counted is None:
        chosen = scoring.reallocated(stats, analysis, counts) if allocation == "global" else counts
        if rechosen and allocation == "global":  # then scoring's only decision is the counts (uniform's: above)
            masks = counted = _chosen_in_recovery(analysis, chosen)
        if counted is None:
            masks = whole_blocks(
                quantized_source, analysis, scoring.choose_masks(method, analysis, chosen, stats, seed)
            )
        signal = stats.top_kind if stats else None
        del stats  # a layer's moments are (units x units): released once the masks are chosen
        return_freed_memory()
        start = timer.stage("scoring", start)
    if counted is None:
        pruned = apply_masks(analysis, masks, data=written)
        start = timer.stage("prune", start)
        flops_after = flops_per_token(pruned, data, held_out)[0]  # before fusion hides the attention products
        start = timer.stage("flops", start)
    # refits on the original's activations read them from this session; the others run a layer at a time, and
    # recovery opens the original only for its output error: held through their refits it is the weights once more
    original = fidelity.session(source, exposed) if recover and refit_inputs == "original" else None
    recovered = None
    if recover:
        found = recovery.projections(analysis, masks, refit_inputs)
        with reporter.stage("refitting projections", len(found)) as advance:
            recovered = recovery.recover(
                analysis,
                pruned,
                masks,
                data,
                scored,
                batch_size,
                advance,
                refit_inputs,
                original,
                reselect,
                written,
                refits_checked,
            )
        pruned, masks, sliced = recovered.model, recovered.masks, recovered.sliced
        start = timer.stage("recovery", start)
        if flops_after is None:
            flops_after = flops_per_token(sliced, data, held_out)[0]
            start = timer.stage("flops", start)
    del original, refits_checked
    return_freed_memory()
    drop_dead_nodes(pruned)  # the shape arithmetic that spelled the pruned sizes: ONNX Runtime would run it
    compressed_session = validate(pruned, data, batch_size)
    start = timer.stage("validate", start)
    fidelity_report = fidelity.compare(checked, compressed_session)
    del compressed_session  # sessions are released as soon as they are done with
    if recover:
        fidelity_report["without_recovery"] = fidelity.compare(checked, fidelity.session(sliced))
    start = timer.stage("fidelity", start)
    if workspace is None or optimize or quantize or int4_input:
        materialize_in_place(pruned)  # ONNX Runtime's fusion and quantizers read the weights from the protobuf
    optimized, timed = None, []  # the quantized forms `optimize` timed, beside the float model each came from
    if optimize:
        deployed = _remembered(quantize, timed) if quantize is not None and not int4_input else None
        pruned, optimized = optimization.optimize(pruned, data, batch_size, deployed)
        start = timer.stage("optimize", start)
    float_model, quantization = pruned, None
    if int4_input:  # back to the input's int4 blocks, refit projections requantized
        refit = [r.weight for r in recovered.refits if r.applied] if recovered and recovered.kept else []
        pruned, quantization = back_to_int4(quantized_source, masks, float_model, refit)
    elif quantize is not None:  # the chosen model's form that optimize timed ships as it is, not quantized again
        pruned, quantization = next((form for m, form in timed if m is float_model), None) or quantized(
            float_model, quantize
        )
    del timed
    if quantization is not None:
        quantization["fidelity"] = fidelity.compare(checked, validate(pruned, data, batch_size))
        timer.stage("quantization", start)
    report = build_report(
        analysis, float_model, masks, keep, method, granularity, data, scored, held_out, signal, fidelity_report, timer
    )
    report["allocation"] = allocation
    report["flops_per_token"] = {"before": flops_before, "after": flops_after, "sequence_length": sequence_length}
    report["recovery"] = None if recovered is None else {"inputs": refit_inputs, **recovered.summary()}
    report["optimization"] = optimized
    report["quantization"] = quantization
    report["file_bytes"]["after"] = model_bytes(pruned)
    if int4_input:  # not its float view's
        report["file_bytes"]["before"] = model_bytes(quantized_source)
    report["peak_rss_gb"] = {"total": peak_rss_gb(), "after_stage": timer.peak_rss_gb}
    return CompressionResult(pruned, report, masks)


def _references(
    analysis: GraphAnalysis,
    source: onnx.ModelProto,
    session: fidelity.Session | None,
    data: calib.Calibration,
    scored: list[int],
    held_out: list[int],
    batch_size: int,
    recover: bool,
    workspace: str | Path | None,
) -> tuple[fidelity.Reference, fidelity.Reference | None]:
    """The original's outputs that fidelity (on `held_out`) and recovery's output check (on part of `scored`) compare
    with: computed once, so that no later session of the original is opened beside a compressed model's (refits on
    the original's activations open their own). From capture's session when it ran in one pass; else, as capture
    then ran, a group of layers at a time (`capture.layered`): a session of the whole original, beside a run's
    activations and logits, was the peak of `compress` on TinyLlama's shape. Never from a session that exposes every
    layer's tensors: ONNX Runtime holds a run's graph outputs to its end, asked for or not (TinyLlama's shape, 16
    samples: 4 GB more)."""
    width = fidelity.output_width(source)
    runs = fidelity.held_out_runs(data, held_out, width, batch_size)
    checks = recovery.check_runs(data, scored, width, batch_size) if recover else []
    first = source.graph.output[0].name
    if session is None and len(capture_passes(analysis, False)) > 1:
        outputs = ((feeds, values[first]) for feeds, values in layered(analysis, [first], runs + checks, False))
    else:
        outputs = fidelity.outputs_of(session or fidelity.session(source), runs + checks)
    folder = Path(workspace) if workspace else None
    checked = fidelity.Reference(islice(outputs, len(runs)), folder)
    return checked, fidelity.Reference(outputs, folder) if recover else None


def _remembered(kind: str, forms: list) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """`quantized` to `kind`, each result kept in `forms` beside the model it came from."""

    def quantize(model: onnx.ModelProto) -> onnx.ModelProto:
        forms.append((model, quantized(model, kind)))
        return forms[-1][1][0]

    return quantize


def _chosen_in_recovery(analysis: GraphAnalysis, counts: dict[str, int]) -> dict[str, np.ndarray] | None:
    """Masks that give only the counts (each group's first units) where recovery chooses again the units of every
    group they prune (`mi` with stream refits, `recovery.reselectable`), else None. Scoring's own choice of units
    would then decide nothing but the model shipped if the refits made the output worse: with uniform allocation
    neither capture nor scoring runs (TinyLlama's shape: 19.5 min instead of 26.2); with global allocation scoring
    runs one top-down pass, for the counts (minilm-sst2 at keep 0.4: scoring 3.2 -> 1.6 s, and no model sliced
    before recovery)."""
    counted = {name: np.arange(analysis.group(name).units) < count for name, count in counts.items()}
    pruned = {name for name, mask in counted.items() if not mask.all()}
    return counted if pruned and pruned == set(recovery.reselectable(analysis, counted)) else None


def exposed_names(analysis: GraphAnalysis, captured: bool, refit_on_original: bool) -> list[str]:
    """The inner tensors that capture and recovery (on the original's activations) read from the original's session."""
    names = capture_names(plan_capture(analysis)) if captured else []
    return list(dict.fromkeys(names + (recovery.activation_names(analysis) if refit_on_original else [])))


def default_allocation(method: str, data: calib.Calibration, granularity: Sequence[str]) -> str:
    """`mi` on an encoder moves heads and neurons between layers by their losses (global: minilm-sst2 at keep 0.3,
    0.8589 against 0.8410 mean of three draws); with the hidden stream pruned too it keeps every layer's share
    (keep 0.4: 0.8303 global against 0.8475 uniform), and on a decoder (stories260k at keep 0.6: perplexity 17.55
    global against 15.96 uniform, global emptying the lowest layers' FFN). The other methods keep every layer's
    share, as their papers do."""
    whole_encoder = data.decoder is None and "hidden" not in granularity
    return "global" if method == "mi" and whole_encoder else "uniform"


def check_allocation(allocation: str, method: str) -> None:
    if allocation not in scoring.ALLOCATIONS:
        raise CompressorError(f"unknown --allocation {allocation!r}; choose from {', '.join(scoring.ALLOCATIONS)}")
    if allocation == "global" and method != "mi":
        raise CompressorError(
            f"--allocation global compares units across layers by their mi losses; --method {method} has no such "
            "loss: use --method mi, or --allocation uniform"
        )


def default_refit_inputs(analysis: GraphAnalysis, data: calib.Calibration, granularity: Sequence[str]) -> str:
    """Recovery's inputs when the caller does not choose: the stream (each layer fit on the pruned model's own
    inputs against the original stream, its units chosen again there by `mi`), but the original's inputs for an
    encoder whose hidden stream is pruned, and for a model whose layers share weights (ALBERT: on the pruned model's
    inputs a shared projection's refit would change its other applications' inputs, so none is refit). Measured
    with `mi`: stories260k perplexity 6.65 / 15.08 at keep 0.8 / 0.6 against 7.02 / 17.83 with the original's inputs;
    minilm-sst2 keep 0.3 / 0.2 mean of three draws 0.8650 / 0.8536 against 0.8589 / 0.8348; with the hidden stream
    pruned (keep 0.4, draw 0) 0.8349 against 0.8475, and 0.8521 against 0.8601 with the stream keeping 0.9 of its
    channels (BENCHMARKS.md)."""
    shared = any(len(analysis.uses(w)) > 1 for g in analysis.groups if g.kind in ("heads", "ffn") for w in g.readers)
    return "original" if shared or data.decoder is None and "hidden" in granularity else "stream"


LOWEST = {"samples": 1, "batch_size": 1, "max_length": calib.MIN_LENGTH, "seed": 0}


def check_counts(**values: int) -> None:
    """The integer options, each at or above its lowest accepted value (the CLI declares the same ranges)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < LOWEST[name]:
            option = "--" + name.replace("_", "-")
            raise CompressorError(f"{option} takes an integer of at least {LOWEST[name]}; got {value!r}")


def _calibration(
    value: str | Path | Sequence[str] | Mapping[str, np.ndarray] | None,
    model: onnx.ModelProto,
    tokenizer_path: Path | None,
    text_columns: Sequence[str] | None,
    label_column: str | None,
    samples: int,
    max_length: int,
    seed: int,
    reporter: Reporter,
    probed: Mapping[str, np.ndarray],
) -> calib.Calibration:
    if value is None and calib.has_tokenizer(tokenizer_path):
        reporter.warn(
            "warning: no calibration data (--calib); scoring on random word sequences from the tokenizer. "
            "Pass sentences like the ones the model will see for a meaningful choice."
        )
        return calib.synthetic(model, tokenizer_path, samples, max_length, seed)
    if value is None:
        reporter.warn(
            "warning: no calibration data (--calib) and no tokenizer; scoring on random inputs shaped by the graph "
            "(token ids within the vocabulary, random pixels). Pass real inputs for a meaningful choice."
        )
        return calib.from_signature(model, probed, tokenizer_path, samples, max_length, seed)
    if isinstance(value, (str, Path)):
        return calib.load_calibration(
            Path(value),
            model,
            tokenizer_path,
            list(text_columns or []) or None,
            label_column,
            samples,
            max_length,
            seed,
        )
    if isinstance(value, Mapping):
        return calib.from_arrays(dict(value), model, samples)
    return calib.from_texts(list(value)[:samples], model, tokenizer_path, max_length)


def split(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Samples for scoring and samples held out for fidelity (all of them for both when there are too few)."""
    order = np.random.default_rng(seed).permutation(count).tolist()
    if count < 40:
        return order, order
    held = max(16, min(HOLDOUT_MAX, count // 5))
    return sorted(order[held:]), sorted(order[:held])


def validate(model: onnx.ModelProto, data: calib.Calibration, batch_size: int):
    """onnx.checker, an ORT session, and one run on calibration inputs with finite outputs."""
    try:
        check_model(model)
        session = fidelity.session(model)
        feeds = next(data.batches(list(range(min(len(data), batch_size))), batch_size))
        outputs = session.run(None, feeds)
    except Exception as exc:  # any failure here is ours, not the user's: report it in one line
        raise CompressorError(f"the compressed model failed validation: {first_line(exc)}") from exc
    if not all(np.isfinite(o).all() for o in outputs):
        raise CompressorError("the compressed model produced non-finite outputs on calibration inputs")
    return session


def build_report(
    analysis: GraphAnalysis,
    pruned: onnx.ModelProto,
    masks,
    keep,
    method,
    granularity,
    data,
    scored,
    held_out,
    top_signal: str | None,
    fidelity_report,
    timer: Timer,
) -> dict:
    matrices = budget.encoder_matrices(analysis)
    kept_units = {name: int(mask.sum()) for name, mask in masks.items()}
    before = budget.parameter_count(analysis, matrices, {})
    after = budget.parameter_count(analysis, matrices, kept_units)
    return {
        "keep_requested": keep,
        "keep_achieved": round(after / before, 4),
        "method": method,
        "granularity": list(granularity),
        "top_signal": top_signal,
        "calibration": {
            "source": data.source,
            "samples": len(data),
            "scored": len(scored),
            "held_out": len(held_out),
            "held_out_disjoint": len(held_out) < len(data),
        },
        "groups": [_group_entry(g, masks.get(g.name)) for g in analysis.groups if g.kind in budget.GRANULARITIES],
        "encoder_weights": {"before": before, "after": after},
        "parameters": {"before": _parameters(analysis.model), "after": _parameters(pruned)},
        "file_bytes": {"before": model_bytes(analysis.model), "after": model_bytes(pruned)},
        "fidelity": fidelity_report,
        "seconds": timer.seconds,
    }


def flops_per_token(model: onnx.ModelProto, data: calib.Calibration, held_out: list[int]) -> tuple[int, int]:
    """MatMul and Gemm FLOPs per token (`graph_passes.flops`, the benchmark's definition) of `model` on the longest
    held-out calibration sample (a pruned decoder's empty caches shaped for it), and that sample's length."""
    feeds = next(data.batches([data.by_length(held_out)[-1]], 1))
    tokens = max((a.shape[1] for a in feeds.values() if a.ndim >= 2), default=1)
    return round(matmul_flops_per_token(model, fit_empty_caches(declared_shapes(model), feeds), tokens)), int(tokens)


def _group_entry(group, mask: np.ndarray | None) -> dict:
    kept = np.arange(group.units) if mask is None else np.flatnonzero(mask)
    return {
        "name": group.name,
        "kind": group.kind,
        "layer": group.layer,
        "units_before": group.units,
        "units_after": len(kept),
        "kept": kept.tolist(),
    }


def _parameters(model: onnx.ModelProto) -> int:
    return int(
        sum(
            np.prod(t.dims)
            for t in model.graph.initializer
            if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"
        )
    )
