"""Models of realistic size with random weights, built with numpy and onnx helpers (no torch), and what `compress`
costs on them: wall time and peak resident memory of the `compress` command, against the weights' size.

    python -m bench.large_models --layers 24 --hidden 1600 --heads 25 --ffn 6400 --out /tmp/big   # about 2.95 GB

The graph is a BERT-shaped encoder as exporters write it: token and position embeddings, LayerNormalization, and per
layer Q/K/V projections reshaped into heads, scaled dot-product attention, an output projection, a residual and
LayerNormalization, a GELU FFN, a residual and LayerNormalization. Weights are saved as external data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20  # Gelu and LayerNormalization are plain ONNX operators from here


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = 30522
    positions: int = 512

    @property
    def parameters(self) -> int:
        per_layer = 4 * self.hidden * self.hidden + 2 * self.hidden * self.ffn + 9 * self.hidden + self.ffn
        return self.layers * per_layer + (self.vocab + self.positions + 2) * self.hidden


class _Graph:
    def __init__(self, rng: np.random.Generator) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.rng = rng

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.02, value: float | None = None) -> str:
        data = np.full(shape, value, np.float32) if value is not None else self.rng.standard_normal(shape, np.float32)
        self.weights.append(numpy_helper.from_array(data if value is not None else data * scale, name))
        return name

    def ints(self, name: str, values: list[int]) -> str:
        self.weights.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name


def build(shape: Shape, path: Path, seed: int = 0) -> Path:
    """Write the model to `path` with its weights in `path.name + '.data'` beside it."""
    g = _Graph(np.random.default_rng(seed))
    head_dim = shape.hidden // shape.heads
    words = g.op("Gather", [g.weight("embeddings.words", (shape.vocab, shape.hidden)), "input_ids"], "words")
    positions = g.op(
        "Gather", [g.weight("embeddings.positions", (shape.positions, shape.hidden)), "position_ids"], "pos"
    )
    stream = _norm(g, g.op("Add", [words, positions], "embedded"), "embeddings.norm", shape.hidden)
    split = g.ints("heads_shape", [0, 0, shape.heads, head_dim])
    merge = g.ints("merged_shape", [0, 0, shape.heads * head_dim])
    scale = g.weight("attention.scale", (), value=1 / np.sqrt(head_dim))
    for i in range(shape.layers):
        p = f"layer.{i}"
        q, k, v = (_heads(g, stream, f"{p}.{n}", shape.hidden, split) for n in ("query", "key", "value"))
        keys = g.op("Transpose", [k], f"{p}.keys_t", perm=[0, 1, 3, 2])
        scores = g.op("Mul", [g.op("MatMul", [q, keys], f"{p}.scores"), scale], f"{p}.scaled")
        context = g.op("MatMul", [g.op("Softmax", [scores], f"{p}.probs", axis=-1), v], f"{p}.context")
        context = g.op(
            "Reshape", [g.op("Transpose", [context], f"{p}.context_t", perm=[0, 2, 1, 3]), merge], f"{p}.merged"
        )
        attended = _linear(g, context, f"{p}.attention.output", shape.hidden, shape.hidden)
        stream = _norm(
            g, g.op("Add", [attended, stream], f"{p}.attention.residual"), f"{p}.attention.norm", shape.hidden
        )
        up = g.op("Gelu", [_linear(g, stream, f"{p}.ffn.up", shape.hidden, shape.ffn)], f"{p}.ffn.gelu")
        down = _linear(g, up, f"{p}.ffn.down", shape.ffn, shape.hidden)
        stream = _norm(g, g.op("Add", [down, stream], f"{p}.ffn.residual"), f"{p}.ffn.norm", shape.hidden)
    g.nodes.append(helper.make_node("Identity", [stream], ["last_hidden_state"], name="output"))
    ids = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "position_ids")
    ]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", shape.hidden])
    graph = helper.make_graph(g.nodes, "bert_shaped", ids, [out], g.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    return path


def _linear(g: _Graph, x: str, name: str, rows: int, columns: int) -> str:
    product = g.op("MatMul", [x, g.weight(f"{name}.weight", (rows, columns))], f"{name}.matmul")
    return g.op("Add", [product, g.weight(f"{name}.bias", (columns,))], f"{name}.add")


def _heads(g: _Graph, x: str, name: str, hidden: int, split: str) -> str:
    projected = g.op("Reshape", [_linear(g, x, name, hidden, hidden), split], f"{name}.split")
    return g.op("Transpose", [projected], f"{name}.heads", perm=[0, 2, 1, 3])


def _norm(g: _Graph, x: str, name: str, hidden: int) -> str:
    gamma, beta = g.weight(f"{name}.weight", (hidden,), value=1.0), g.weight(f"{name}.bias", (hidden,), value=0.0)
    return g.op("LayerNormalization", [x, gamma, beta], f"{name}.out", axis=-1, epsilon=1e-12)


def compress_cost(model: Path, keep: float, samples: int, length: int, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """Wall seconds and peak RSS (GB) of `compress MODEL --keep K` and the `extra` options (none: inputs from the
    graph, no tokenizer, no data)."""
    command = [
        "/usr/bin/time", "-v", sys.executable, "-m", "command_line", str(model), "--keep", str(keep),
        "--samples", str(samples), "--max-length", str(length), "--out", str(out), "--quiet", "--method", "mi", *extra,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # the command's own last line, before /usr/bin/time's tab-indented statistics
        said = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith(("\t", "Command exited"))]
        raise RuntimeError(said[-1] if said else f"compress exited with status {result.returncode}")
    fields = dict(line.strip().split(": ", 1) for line in result.stderr.splitlines() if ": " in line)
    elapsed = fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(elapsed)))
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(int(fields["Maximum resident set size (kbytes)"]) / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("layers", 24), ("hidden", 1600), ("heads", 25), ("ffn", 6400)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mi-large-model")
    args = parser.parse_args()
    shape = Shape(args.layers, args.hidden, args.heads, args.ffn)
    model = build(shape, args.out / "model.onnx")
    weights_gb = (model.stat().st_size + (model.parent / f"{model.name}.data").stat().st_size) / 2**30
    cost = compress_cost(model, args.keep, args.samples, args.max_length, args.out / "small.onnx")
    print(
        json.dumps({"shape": vars(shape), "parameters": shape.parameters, "weights_gb": round(weights_gb, 2), **cost})
    )


if __name__ == "__main__":
    main()
