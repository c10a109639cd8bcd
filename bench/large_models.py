"""Models of realistic size with random weights, built with numpy and onnx helpers (no torch), and what `compress`
costs on them: wall time and peak resident memory of the `compress` command, against the weights' size.

    python -m bench.large_models --layers 24 --hidden 1600 --heads 25 --ffn 6400 --out /tmp/big   # about 2.95 GB

`build` writes a BERT-shaped encoder as exporters write it: token and position embeddings, LayerNormalization, and
per layer Q/K/V projections reshaped into heads, scaled dot-product attention, an output projection, a residual and
LayerNormalization, a GELU FFN, a residual and LayerNormalization. `build_decoder` writes a Llama-shaped decoder with
its KV cache, in the operators optimum's Llama export uses (RMSNorm decomposed, rotary embeddings from tables
gathered at `position_ids`, grouped-query attention repeating each KV head by Unsqueeze, Expand and Reshape, SwiGLU,
an untied `lm_head`). Each weight is written to the data file as it is drawn, so that building a model holds one
weight at a time, and the graph refers to them (external data).
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

from graph_passes.external_data import DataFile, relative_to

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
    """Nodes, and weights written to the data file as they are made."""

    def __init__(self, rng: np.random.Generator, path: Path) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.rng = rng
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(f"{path.name}.data").unlink(missing_ok=True)
        self.data = DataFile(path.with_name(f"{path.name}.data"))

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.02, value: float | None = None) -> str:
        data = np.full(shape, value, np.float32) if value is not None else self.rng.standard_normal(shape, np.float32)
        self.weights.append(self.data.store(name, data if value is not None else data * scale))
        return name

    def ints(self, name: str, values: list[int]) -> str:
        self.weights.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def floats(self, name: str, values: float | list[float]) -> str:
        self.weights.append(numpy_helper.from_array(np.array(values, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def save(self, path: Path, inputs: list, outputs: list, name: str, opset: int) -> Path:
        """The graph written to `path`, its weights referred to in the data file beside it."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, relative_to(self.weights, path.parent))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
        path.write_bytes(model.SerializeToString())
        return path


def build(shape: Shape, path: Path, seed: int = 0) -> Path:
    """Write the model to `path` with its weights in `path.name + '.data'` beside it."""
    g = _Graph(np.random.default_rng(seed), path)
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
    return g.save(path, ids, [out], "bert_shaped", OPSET)


def _linear(g: _Graph, x: str, name: str, rows: int, columns: int) -> str:
    product = g.op("MatMul", [x, g.weight(f"{name}.weight", (rows, columns))], f"{name}.matmul")
    return g.op("Add", [product, g.weight(f"{name}.bias", (columns,))], f"{name}.add")


def _heads(g: _Graph, x: str, name: str, hidden: int, split: str) -> str:
    projected = g.op("Reshape", [_linear(g, x, name, hidden, hidden), split], f"{name}.split")
    return g.op("Transpose", [projected], f"{name}.heads", perm=[0, 2, 1, 3])


def _norm(g: _Graph, x: str, name: str, hidden: int) -> str:
    gamma, beta = g.weight(f"{name}.weight", (hidden,), value=1.0), g.weight(f"{name}.bias", (hidden,), value=0.0)
    return g.op("LayerNormalization", [x, gamma, beta], f"{name}.out", axis=-1, epsilon=1e-12)


@dataclass(frozen=True)
class DecoderShape:
    """A Llama: `heads` query heads over `kv_heads` key/value heads of `head_dim` each."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int = 32000
    positions: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def parameters(self) -> int:
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * self.head_dim
        per_layer = attention + 3 * self.hidden * self.ffn + 2 * self.hidden
        return self.layers * per_layer + 2 * self.vocab * self.hidden + self.hidden


def build_decoder(shape: DecoderShape, path: Path, seed: int = 0) -> Path:
    """Write a Llama-shaped decoder with its KV cache (inputs `input_ids`, `attention_mask`, `position_ids`,
    `past_key_values.N.key/value`; outputs `logits`, `present.N.key/value`) to `path`, its weights in
    `path.name + '.data'` beside it."""
    g = _Graph(np.random.default_rng(seed), path)
    stream = g.op("Gather", [g.weight("model.embed_tokens.weight", (shape.vocab, shape.hidden)), "input_ids"], "embed")
    context = _Context(
        *_rotary(g, shape), _causal_bias(g), *(_size(g, "embed", axis, f"embed.{axis}") for axis in (0, 1))
    )
    for layer in range(shape.layers):
        stream = _decoder_layer(g, stream, f"model.layers.{layer}", layer, shape, context)
    final = _rms_norm(g, stream, "model.norm", shape.hidden)
    g.nodes.append(
        helper.make_node("MatMul", [final, g.weight("lm_head.weight", (shape.hidden, shape.vocab))], ["logits"])
    )
    return g.save(path, *_decoder_interface(shape), "llama_shaped", 18)


@dataclass(frozen=True)
class _Context:
    """What every layer reads besides the stream: rotary tables at the positions, the attention bias, the sizes."""

    cos: str
    sin: str
    bias: str
    batch: str
    tokens: str


def _decoder_layer(g: _Graph, stream: str, p: str, layer: int, shape: DecoderShape, c: _Context) -> str:
    """One Llama layer on the residual stream: attention with its cache and grouped-query heads, then SwiGLU."""
    h = _rms_norm(g, stream, f"{p}.input_layernorm", shape.hidden)
    widths = {"q": shape.heads * shape.head_dim, "k": shape.kv_heads * shape.head_dim}
    widths["v"] = widths["k"]
    q, k, v = (_split_heads(g, h, f"{p}.self_attn.{n}_proj", w, shape, c.batch, c.tokens) for n, w in widths.items())
    q, k = (_rotated(g, x, c.cos, c.sin, shape.head_dim, f"{p}.self_attn.{n}") for x, n in ((q, "q"), (k, "k")))
    keys = g.op("Concat", [f"past_key_values.{layer}.key", k], f"present.{layer}.key", axis=-2)
    values = g.op("Concat", [f"past_key_values.{layer}.value", v], f"present.{layer}.value", axis=-2)
    repeat = shape.heads // shape.kv_heads
    keys, values = (_repeated(g, x, repeat, f"{p}.self_attn.{n}") for x, n in ((keys, "keys"), (values, "values")))
    scores = g.op("MatMul", [q, g.op("Transpose", [keys], f"{p}.keys_t", perm=[0, 1, 3, 2])], f"{p}.scores")
    scaled = g.op("Mul", [scores, g.floats(f"{p}.scale", 1 / np.sqrt(shape.head_dim))], f"{p}.scaled")
    probs = g.op("Softmax", [g.op("Add", [scaled, c.bias], f"{p}.masked")], f"{p}.probs", axis=-1)
    attended = g.op("MatMul", [probs, values], f"{p}.attended")
    merged = g.op("Transpose", [attended], f"{p}.attended_t", perm=[0, 2, 1, 3])
    target = g.op("Concat", [c.batch, c.tokens, g.ints(f"{p}.merged", [-1])], f"{p}.merged_shape", axis=0)
    merged = g.op("Reshape", [merged, target], f"{p}.merged_heads")
    output = _matmul(g, merged, f"{p}.self_attn.o_proj", shape.hidden, shape.hidden)
    stream = g.op("Add", [stream, output], f"{p}.attention_residual")
    h = _rms_norm(g, stream, f"{p}.post_attention_layernorm", shape.hidden)
    gate = _matmul(g, h, f"{p}.mlp.gate_proj", shape.hidden, shape.ffn)
    up = _matmul(g, h, f"{p}.mlp.up_proj", shape.hidden, shape.ffn)
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}.mlp.sigmoid")], f"{p}.mlp.silu")
    down = _matmul(g, g.op("Mul", [silu, up], f"{p}.mlp.gated"), f"{p}.mlp.down_proj", shape.ffn, shape.hidden)
    return g.op("Add", [stream, down], f"{p}.mlp_residual")


def _decoder_interface(shape: DecoderShape) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    """The graph inputs and outputs, with the symbolic sizes optimum's Llama export declares."""
    past, total = "past_sequence_length", "past_sequence_length + sequence_length"
    tokens = [("input_ids", "sequence_length"), ("attention_mask", total), ("position_ids", "sequence_length")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", length]) for n, length in tokens]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", shape.vocab])
    ]
    for layer in range(shape.layers):
        for kind in ("key", "value"):
            for names, length in ((inputs, past), (outputs, total)):
                name = f"past_key_values.{layer}.{kind}" if names is inputs else f"present.{layer}.{kind}"
                dims = ["batch_size", shape.kv_heads, length, shape.head_dim]
                names.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    return inputs, outputs


def _rotary(g: _Graph, shape: DecoderShape) -> tuple[str, str]:
    """cos and sin at each token's position, (batch, 1, tokens, head_dim): tables gathered at `position_ids`."""
    found = []
    for name, table in zip(("cos", "sin"), _rotary_tables(shape)):
        gathered = g.op("Gather", [g.floats(f"rotary.{name}.table", table), "position_ids"], f"rotary.{name}")
        found.append(g.op("Unsqueeze", [gathered, g.ints(f"rotary.{name}.axis", [1])], f"rotary.{name}.heads"))
    return found[0], found[1]


def _rotary_tables(shape: DecoderShape) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of each position's rotation angles, (positions, head_dim), halves repeated as Llama lays them."""
    inverse = 1 / 10000 ** (np.arange(0, shape.head_dim, 2) / shape.head_dim)
    angles = np.outer(np.arange(shape.positions), inverse)
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _size(g: _Graph, tensor: str, axis: int, name: str) -> str:
    """The run-time size of `tensor`'s `axis`, as a 1-D tensor (for Concat into a shape)."""
    index = g.ints(f"{name}.index", [axis])
    return g.op("Gather", [g.op("Shape", [tensor], f"{name}.shape"), index], name, axis=0)


def _causal_bias(g: _Graph) -> str:
    """(batch, 1, new tokens, past + new tokens): 0 where a new token may attend (earlier or itself, not padding),
    the lowest float elsewhere."""
    total = _size(g, "attention_mask", 1, "mask.total")
    new = _size(g, "input_ids", 1, "mask.new")
    scalar = g.ints("mask.scalar", [])
    start, end = (g.op("Reshape", [x, scalar], f"{x}.scalar") for x in (g.op("Sub", [total, new], "mask.past"), total))
    step = g.ints("mask.step", 1)
    rows = g.op("Range", [start, end, step], "mask.rows")
    rows = g.op("Unsqueeze", [rows, g.ints("mask.column", [1])], "mask.rows_t")
    columns = g.op("Range", [g.ints("mask.zero", 0), end, step], "mask.columns")
    causal = g.op("LessOrEqual", [columns, rows], "mask.causal")
    padded = g.op("Unsqueeze", ["attention_mask", g.ints("mask.axes", [1, 2])], "mask.padded")
    allowed = g.op("And", [causal, g.op("Cast", [padded], "mask.kept", to=TensorProto.BOOL)], "mask.allowed")
    lowest = float(np.finfo(np.float32).min)
    return g.op("Where", [allowed, g.floats("mask.open", 0.0), g.floats("mask.closed", lowest)], "mask.bias")


def _rms_norm(g: _Graph, x: str, name: str, width: int) -> str:
    squares = g.op("Pow", [x, g.floats(f"{name}.two", 2.0)], f"{name}.squares")
    mean = g.op("ReduceMean", [squares, g.ints(f"{name}.axes", [-1])], f"{name}.mean", keepdims=1)
    root = g.op("Sqrt", [g.op("Add", [mean, g.floats(f"{name}.epsilon", 1e-5)], f"{name}.shifted")], f"{name}.root")
    normed = g.op("Mul", [x, g.op("Div", [g.floats(f"{name}.one", 1.0), root], f"{name}.inverse")], f"{name}.normed")
    return g.op("Mul", [g.weight(f"{name}.weight", (width,), value=1.0), normed], f"{name}.out")


def _matmul(g: _Graph, x: str, name: str, rows: int, columns: int) -> str:
    return g.op("MatMul", [x, g.weight(f"{name}.weight", (rows, columns))], f"{name}.out")


def _split_heads(g: _Graph, x: str, name: str, width: int, shape: DecoderShape, batch: str, tokens: str) -> str:
    """(batch, tokens, heads x head_dim) -> (batch, heads, tokens, head_dim), the head count left to Reshape (-1)."""
    target = g.op(
        "Concat",
        [batch, tokens, g.ints(f"{name}.heads", [-1]), g.ints(f"{name}.head_dim", [shape.head_dim])],
        f"{name}.target",
        axis=0,
    )
    split = g.op("Reshape", [_matmul(g, x, name, shape.hidden, width), target], f"{name}.split")
    return g.op("Transpose", [split], f"{name}.heads_first", perm=[0, 2, 1, 3])


def _rotated(g: _Graph, x: str, cos: str, sin: str, head_dim: int, name: str) -> str:
    """x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1] for the halves x1, x2 of the head dimension."""
    axis, half = g.ints(f"{name}.rotary_axis", [3]), g.ints(f"{name}.half", [head_dim // 2])
    first = g.op("Slice", [x, g.ints(f"{name}.start", [0]), half, axis], f"{name}.first_half")
    second = g.op("Slice", [x, half, g.ints(f"{name}.end", [head_dim]), axis], f"{name}.second_half")
    rotated = g.op("Concat", [g.op("Neg", [second], f"{name}.negated"), first], f"{name}.rotated", axis=-1)
    return g.op(
        "Add", [g.op("Mul", [x, cos], f"{name}.by_cos"), g.op("Mul", [rotated, sin], f"{name}.by_sin")], f"{name}.rope"
    )


def _repeated(g: _Graph, x: str, repeat: int, name: str) -> str:
    """(batch, kv heads, tokens, head_dim) with each KV head repeated `repeat` times next to itself, as Llama's
    repeat_kv: Unsqueeze, Expand to (batch, kv heads, repeat, tokens, head_dim), Reshape."""
    batch, heads, tokens, width = (_size(g, x, axis, f"{name}.size{axis}") for axis in range(4))
    times = g.ints(f"{name}.repeat", [repeat])
    expanded_shape = g.op("Concat", [batch, heads, times, tokens, width], f"{name}.expanded_shape", axis=0)
    expanded = g.op(
        "Expand",
        [g.op("Unsqueeze", [x, g.ints(f"{name}.axis", [2])], f"{name}.unsqueezed"), expanded_shape],
        f"{name}.expanded",
    )
    merged_heads = g.op("Mul", [heads, times], f"{name}.heads")
    merged_shape = g.op("Concat", [batch, merged_heads, tokens, width], f"{name}.merged_shape", axis=0)
    return g.op("Reshape", [expanded, merged_shape], f"{name}.merged")


def compress_cost(model: Path, keep: float, samples: int, length: int, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """Wall seconds and peak RSS (GB) of `compress MODEL --keep K` and the `extra` options (none: inputs from the
    graph, no tokenizer, no data)."""
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "command_line",
        str(model),
        "--keep",
        str(keep),
        "--samples",
        str(samples),
        "--max-length",
        str(length),
        "--out",
        str(out),
        "--quiet",
        "--method",
        "mi",
        *extra,
    ]
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
