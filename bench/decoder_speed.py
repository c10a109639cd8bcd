"""Decoder speed at realistic width (issue 12): a Llama of about 150M parameters with **random weights**, built and
exported here, compressed to keep 0.6 and 0.4, and timed against the ideals.

    python -m bench.decoder_speed --out /tmp/mi-decoder-speed      # prints the rows as JSON

The model: hidden 768, 12 layers, 12 query heads over 4 KV heads (head size 64), SwiGLU 3072, vocabulary 32000,
untied `lm_head` (153M parameters), exported by optimum (`text-generation-with-past`) as the tiny decoder tests do.
Its tokenizer is stories260k's (512 tokens: the ids read only the first rows of the 32000-row table, which changes
no timing). Calibration text: TinyStories validation stories. The weights are random, so which units survive means
nothing here: only speed and the cost of `compress` are measured.

- Cost: wall time and peak RSS of the `compress` command (recovery on), one process per keep.
- Prefill: `compress bench`'s interleaved timing (bench.deployment), batch 1 and 8, prompt 128, against the FLOPs
  ideal (the original's MatMul FLOPs per token over the pruned model's, `graph_passes/flops.py`).
- Decode: greedy generation with the KV cache fed back (bench.decoding), tokens/s, against the weight-bytes ideal:
  the bytes of MatMul weights one decoding step reads (every projection and `lm_head`; the embedding Gather reads one
  row), original over pruned.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx

from bench.deployment import Settings, run_bench
from bench.flops import matmul_flops_per_token
from bench.large_models import compress_cost

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER = SHARED / "models" / "stories260k-hf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
STORIES = SHARED / "data" / "tinystories" / "valid-head.txt"
SHAPE = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
KEEPS = (0.6, 0.4)
BATCHES = (1, 8)
PROMPT = 128
NEW_TOKENS = 32
SAMPLES = 32  # random weights: calibration only has to run, not to choose well; and the cost stays small


def build_source(folder: Path, seed: int = 0) -> tuple[Path, int]:
    """The transformers folder (config, safetensors, tokenizer) of the random-weight Llama, and its parameter count."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER / name, folder / name)
    return folder, sum(p.numel() for p in model.parameters())


def export_optimum(source: Path, folder: Path) -> Path:
    """optimum's `text-generation-with-past` export of the source folder: model.onnx, config and tokenizer."""
    import transformers
    from optimum.exporters.onnx import onnx_export_from_model

    model = transformers.LlamaForCausalLM.from_pretrained(source, attn_implementation="eager").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(copy.deepcopy(model), folder, opset=18, task="text-generation-with-past",
                               do_validation=False)  # fmt: skip
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    return folder / "model.onnx"


def compress_costs(original: Path, calib: Path, out: Path) -> dict[float, dict]:
    """Per keep: the `compress` command's wall seconds and peak RSS (recovery on), and the folder it wrote."""
    found = {}
    for keep in KEEPS:
        folder = out / f"keep{keep}"
        shutil.rmtree(folder, ignore_errors=True)
        extra = ("--calib", str(calib), "--tokenizer", str(original.parent))
        cost = compress_cost(original.parent, keep, SAMPLES, PROMPT, folder, extra)
        found[keep] = {**cost, "path": folder / "model.onnx"}
    return found


def weight_bytes_per_step(model: onnx.ModelProto) -> int:
    """Bytes of the constant weights that the MatMul, Gemm and MatMulNBits nodes read in one decoding step (every
    projection and `lm_head` whole; an embedding Gather reads one row and is left out)."""
    sizes = {
        t.name: int(np.prod(t.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in model.graph.initializer
    }
    read = {
        name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm", "MatMulNBits")
        for name in node.input[1:]
        if name in sizes
    }
    return sum(sizes[name] for name in read)


def ideals(paths: dict[str, Path]) -> dict[str, dict]:
    """Per model: MatMul FLOPs per token of a prefill of PROMPT tokens, and weight bytes per decoding step."""
    found = {}
    for name, path in paths.items():
        graph = onnx.load(str(path), load_external_data=False)
        found[name] = {
            "mflops_per_token": round(matmul_flops_per_token(onnx.load(str(path)), PROMPT) / 1e6, 2),
            "weight_mb_per_step": round(weight_bytes_per_step(graph) / 1e6, 2),
        }
    return found


def timing_rows(paths: dict[str, Path], runs: int, warmup: int) -> list[dict]:
    """`compress bench`'s rows for the models, interleaved, the original first: prefill and decode per batch."""
    settings = Settings(["cpu"], list(BATCHES), [PROMPT], warmup=warmup, runs=runs, memory=False, new_tokens=NEW_TOKENS)
    result = run_bench(list(paths.values()), settings)
    names = {str(path): name for name, path in paths.items()}
    return [{**row, "model": names[row["path"]]} for row in result.rows]


def summary(rows: list[dict], ideal: dict[str, dict]) -> list[dict]:
    """Per pruned model, phase and batch: the measured speedup next to the ideal and its share."""
    base = ideal["original"]
    found = []
    for row in rows:
        if row["model"] == "original":
            continue
        mine = ideal[row["model"]]
        if row["phase"] == "prefill":
            target = base["mflops_per_token"] / mine["mflops_per_token"]
        else:
            target = base["weight_mb_per_step"] / mine["weight_mb_per_step"]
        found.append(
            {
                "model": row["model"],
                "phase": row["phase"],
                "batch": row["batch"],
                "speedup": row["speedup"],
                "ideal": round(target, 3),
                "share_of_ideal": round(row["speedup"] / target, 3),
            }
        )
    return found


def measure(out: Path, runs: int, warmup: int) -> dict:
    """Build, export, compress and time; every number of the section."""
    source, parameters = build_source(out / "hf")
    original = export_optimum(source, out / "original")
    costs = compress_costs(original, STORIES, out)
    paths = {"original": original} | {f"keep {keep}": cost["path"] for keep, cost in costs.items()}
    ideal = ideals(paths)
    rows = timing_rows(paths, runs, warmup)
    return {
        "shape": SHAPE,
        "parameters": parameters,
        "costs": {f"keep {k}": {n: v for n, v in c.items() if n != "path"} for k, c in costs.items()},
        "ideals": ideal,
        "runs": runs,
        "warmup": warmup,
        "rows": rows,
        "summary": summary(rows, ideal),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mi-decoder-speed"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(measure(args.out, args.runs, args.warmup), indent=1, default=str))


if __name__ == "__main__":
    main()


def speed_markdown(found: dict) -> list[str]:
    """The section: what was built, the cost of `compress`, prefill against the FLOPs ideal, decode against the
    weight-bytes ideal."""
    rows = {(r["model"], r["phase"], r["batch"]): r for r in found["rows"]}
    ideal = found["ideals"]
    lines = [
        "## Decoder speed at realistic width (a 150M Llama with random weights)",
        "",
        f"A Llama built by `python -m bench.decoder_speed` with **random weights** ({found['parameters'] / 1e6:.0f}M "
        "parameters: hidden 768, 12 layers, 12 query heads over 4 KV heads of size 64, SwiGLU 3072, vocabulary 32000, "
        "untied `lm_head`), exported by optimum (`text-generation-with-past`). Random weights make the choice of "
        "units meaningless: only speed and cost are measured here. Calibration: TinyStories validation text "
        f"(stories260k's tokenizer), {SAMPLES} sequences of {PROMPT} tokens, `--method mi`, recovery on. Timing: "
        f"`compress bench`'s interleaved rounds ({', '.join(ideal)} taking turns), ONNX Runtime CPU, "
        f"default threads, prompt {PROMPT}, {found['runs']} timed runs after {found['warmup']} warm-up; decode: greedy "
        f"generation of {NEW_TOKENS} tokens with the KV cache fed back, medians of every step. The machine's 2 cores "
        "were shared with other jobs during the run: read the ratios, which come from the same rounds, rather than "
        "the absolute milliseconds.",
        "",
        "| keep | `compress` wall s | peak RSS GB | MFLOPs per token (prefill) | weight MB read per decode step |",
        "|---|---|---|---|---|",
        f"| original | - | - | {ideal['original']['mflops_per_token']} | {ideal['original']['weight_mb_per_step']} |",
    ]
    for name, cost in found["costs"].items():
        lines.append(
            f"| {name.removeprefix('keep ')} | {cost['seconds']} | {cost['peak_rss_gb']} | "
            f"{ideal[name]['mflops_per_token']} | {ideal[name]['weight_mb_per_step']} |"
        )
    lines += [
        "",
        "| phase | batch | keep | p50 ms (original) | p50 ms | tokens/s | speedup | ideal | share of ideal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in found["summary"]:
        row = rows[(item["model"], item["phase"], item["batch"])]
        base = rows[("original", item["phase"], item["batch"])]
        rate = f"{base.get('tokens_per_s', '-')} -> {row['tokens_per_s']}" if item["phase"] == "decode" else "-"
        lines.append(
            f"| {item['phase']} | {item['batch']} | {item['model'].removeprefix('keep ')} | {base['p50_ms']} | "
            f"{row['p50_ms']} | {rate} | {item['speedup']:.2f}x | {item['ideal']:.2f}x | {item['share_of_ideal']:.0%} |"
        )
    lines += [
        "",
        "Ideal, prefill: the original's MatMul FLOPs per token over the pruned model's (`graph_passes/flops.py`, "
        "attention products included; target: at least 90%). Ideal, decode: the bytes of MatMul weights one step "
        "reads, original over pruned (a step at small batch streams every projection and `lm_head` once). Decode "
        "p50 is milliseconds per step for the whole batch.",
        "",
    ]
    return lines + ([f"Not measured in this run: {found['note']}", ""] if found.get("note") else [])
