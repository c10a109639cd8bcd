"""Decoders built by ONNX Runtime GenAI's model builder (tests/fixtures/genai/): GroupQueryAttention (packed or separate
Q, K, V, rotary inside), SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization and MatMulNBits. KV-group and
FFN masks prune them; the pruned model gives the logits of the same pruning done by hand on the transformers source,
and, written into a GenAI folder, onnxruntime_genai greedy-generates what a plain ONNX Runtime loop does. Then the
fusions of ONNX Runtime's tools: RotaryEmbedding before MultiHeadAttention with a cache or GroupQueryAttention with
do_rotary=0 (against the same graph built from weights pruned by hand), and its transformer optimizer's RMSNorm
fusions on optimum exports (fusing then pruning equals pruning then fusing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import genai_loop
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_decoders
import torch
import transformers

from compressor.genai_folder import read_config, updated_config
from graph_passes import UnsupportedGraphError, analyze, apply_masks, load_model

GENAI = Path(__file__).resolve().parents[1] / "fixtures" / "genai"
TOLERANCE = 1e-4
FP32 = {
    "llama-gqa-fp32": "llama-gqa-hf",
    "llama-gqa-fp32-separate-qkv": "llama-gqa-hf",
    "qwen2-gqa-fp32": "qwen2-gqa-hf",
}
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def analyses():
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = analyze(load_model(GENAI / name / "model.onnx"))
        return cache[name]

    return get


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _empty_cache(session: ort.InferenceSession, head_size: int) -> dict[str, np.ndarray]:
    return {
        i.name: np.zeros((1, i.shape[1], 0, head_size), dtype=np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values")
    }


def _step(session, ids: np.ndarray, total: int, past: dict) -> tuple[np.ndarray, dict]:
    names = [o.name for o in session.get_outputs()]
    feeds = {"input_ids": ids[None, :], "attention_mask": np.ones((1, total), dtype=np.int64)}
    results = dict(zip(names, session.run(names, feeds | past)))
    return results["logits"], {name: results[name.replace("past_key_values", "present")] for name in past}


def ort_greedy(session, prompt: np.ndarray, head_size: int, new_tokens: int = NEW_TOKENS) -> tuple[np.ndarray, list]:
    """Prefill logits and the greedy tokens of a plain ONNX Runtime loop feeding present.* back as past."""
    logits, past = _step(session, prompt, len(prompt), _empty_cache(session, head_size))
    prefill, tokens = logits, []
    for _ in range(new_tokens):
        tokens.append(int(np.argmax(logits[0, -1])))
        logits, past = _step(session, np.array(tokens[-1:]), len(prompt) + len(tokens), past)
    return prefill, tokens


def genai_greedy(folder: Path, prompt: np.ndarray, new_tokens: int = NEW_TOKENS) -> list[int]:
    return genai_loop.genai_greedy(folder, prompt, new_tokens)


def random_masks(analysis, seed: int) -> tuple[dict, dict, dict]:
    """Per layer: the last KV group (layer 0) or a random non-empty choice, and a random ~2/3 of FFN
    neurons. Returns (graph masks, torch head masks, torch FFN masks)."""
    rng = np.random.default_rng(seed)
    masks, heads, ffn = {}, {}, {}
    for group in analysis.by_kind("heads"):
        mask = np.zeros(group.units, dtype=bool)
        if group.layer == 0:  # the last group alone: its Q, K and V segments sit at offsets within the packed axis
            mask[-1] = True
        else:
            mask[rng.choice(group.units, size=int(rng.integers(1, group.units + 1)), replace=False)] = True
        masks[group.name], heads[group.layer] = mask, mask
    for group in analysis.by_kind("ffn"):
        mask = rng.random(group.units) < 0.66
        mask[rng.integers(group.units)] = True
        masks[group.name], ffn[group.layer] = mask, mask
    return masks, heads, ffn


def _torch_source(hf: str) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(GENAI / hf), attn_implementation="eager", dtype=torch.float32
    ).eval()


@pytest.mark.parametrize("name", FP32)
def test_kv_groups_ffn_and_hidden_stream_are_found(analyses, name):
    analysis = analyses(name)
    heads, ffn = analysis.by_kind("heads"), analysis.by_kind("ffn")
    assert [(g.layer, g.units, g.width, g.prunable) for g in heads] == [(0, 2, 32, True), (1, 2, 32, True)]
    assert [(g.layer, g.units, g.prunable) for g in ffn] == [(0, 96, True), (1, 96, True)]
    assert heads[1].cache == [
        "past_key_values.1.key", "past_key_values.1.value", "present.1.key", "present.1.value"
    ]  # fmt: skip
    (hidden,) = analysis.by_kind("hidden")
    assert hidden.units == 64
    assert not analysis.unsupported


@pytest.mark.parametrize("name", FP32)
def test_pruned_genai_model_matches_torch_and_generates_in_ort_genai(analyses, name, tmp_path):
    analysis = analyses(name)
    masks, heads, ffn = random_masks(analysis, seed=len(name))
    pruned = apply_masks(analysis, masks)
    kv_counts = {
        n.name: {a.name: a.i for a in n.attribute if a.name in ("num_heads", "kv_num_heads")}
        for n in pruned.graph.node
        if n.op_type == "GroupQueryAttention"
    }
    assert [c["kv_num_heads"] for c in kv_counts.values()] == [int(heads[k].sum()) for k in sorted(heads)]
    assert [c["num_heads"] for c in kv_counts.values()] == [2 * int(heads[k].sum()) for k in sorted(heads)]
    past = {i.name: i.type.tensor_type.shape.dim[1].dim_value for i in pruned.graph.input if "past" in i.name}
    assert past["past_key_values.0.key"] == past["past_key_values.0.value"] == 1
    assert past["past_key_values.1.key"] == int(heads[1].sum())

    reference = np.load(GENAI / name / "reference.npz")
    prompt = reference["prompt"]
    prefill, tokens = ort_greedy(_session(pruned), prompt, head_size=16)
    torch_model = tiny_decoders.torch_pruned(_torch_source(FP32[name]), heads=heads, ffn=ffn)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(prompt[None, :])).logits.numpy()
    assert np.abs(prefill - expected).max() < TOLERANCE
    assert not np.allclose(prefill, reference["prefill_logits"], atol=1e-2)  # the pruning changed something

    folder = tmp_path / name
    shutil.copytree(GENAI / name, folder, ignore=shutil.ignore_patterns("model.onnx*", "reference.npz"))
    onnx.save(pruned, str(folder / "model.onnx"))
    config = updated_config(
        read_config(GENAI / name),
        heads=int(2 * max(m.sum() for m in heads.values())),
        kv_heads=int(max(m.sum() for m in heads.values())),
        head_size=16,
        hidden=None,
        intermediate=None,
    )
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))
    assert genai_greedy(folder, prompt) == tokens


# --- int4 (MatMulNBits) ------------------------------------------------------------------------------------------


def dequantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with each MatMulNBits replaced by a MatMul on its dequantized weight (plus its bias)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        attrs = {a.name: a.i for a in node.attribute}
        inputs = list(node.input) + [""] * 6
        packed, scales = weights[inputs[1]], weights[inputs[2]]
        values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], packed.shape[1], -1)
        zero = 8.0
        if inputs[3]:
            points = weights[inputs[3]]
            zero = np.stack([points & 0x0F, points >> 4], axis=-1).reshape(points.shape[0], -1)[
                :, : scales.shape[1], None
            ]
        matrix = ((values - zero) * scales[:, :, None]).reshape(attrs["N"], -1)[:, : attrs["K"]]
        name = f"{inputs[1]}_dequantized"
        model.graph.initializer.append(onnx.numpy_helper.from_array(matrix.T.astype(np.float32).copy(), name))
        out = node.output[0] if not inputs[5] else f"{node.output[0]}_nobias"
        nodes.append(onnx.helper.make_node("MatMul", [inputs[0], name], [out], name=node.name))
        if inputs[5]:
            nodes.append(onnx.helper.make_node("Add", [out, inputs[5]], [node.output[0]], name=f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def exact_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """accuracy_level 0: MatMulNBits computes in float, not on int8-quantized activations, so it equals the
    dequantized MatMul to float rounding."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                attribute.i = 0
    return model


def block_masks(analysis, seed: int) -> dict:
    """The last KV group of layer 0 and both of layer 1; FFN neurons kept in whole blocks of 32."""
    rng = np.random.default_rng(seed)
    masks = {"heads[0]": np.array([False, True]), "heads[1]": np.array([True, True])}
    for group in analysis.by_kind("ffn"):
        blocks = np.zeros(group.units // 32, dtype=bool)
        blocks[rng.choice(len(blocks), size=int(rng.integers(1, len(blocks))), replace=False)] = True
        masks[group.name] = np.repeat(blocks, 32)
    return masks


def test_int4_kv_groups_and_block_aligned_ffn_prune_like_the_dequantized_model(analyses, tmp_path):
    name = "llama-gqa-int4"
    analysis = analyses(name)
    assert [(g.name, g.units, g.prunable) for g in analysis.groups if g.kind in ("heads", "ffn")] == [
        ("heads[0]", 2, True), ("heads[1]", 2, True), ("ffn[0]", 96, True), ("ffn[1]", 96, True)
    ]  # fmt: skip
    masks = block_masks(analysis, seed=3)
    pruned = apply_masks(analysis, masks)
    reference = apply_masks(analyze(dequantized(analysis.model)), masks)
    prompt = np.load(GENAI / name / "reference.npz")["prompt"]
    got, _ = ort_greedy(_session(exact_int4(pruned)), prompt, head_size=16)
    expected, _ = ort_greedy(_session(reference), prompt, head_size=16)
    assert np.abs(got - expected).max() < TOLERANCE
    kept = {n.name: {a.name: a.i for a in n.attribute if a.name in "KN"} for n in pruned.graph.node}
    assert kept["/model/layers.0/mlp/down_proj/MatMul_Q4"]["K"] == masks["ffn[0]"].sum()
    assert kept["/model/layers.0/attn/qkv_proj/MatMul_Q4"]["N"] == 64  # one KV group of Q, K, V: 32 + 16 + 16
    assert kept["/model/layers.0/attn/o_proj/MatMul_Q4"]["K"] == 32

    folder = tmp_path / name
    shutil.copytree(GENAI / name, folder, ignore=shutil.ignore_patterns("model.onnx*", "reference.npz"))
    onnx.save(pruned, str(folder / "model.onnx"))
    _, tokens = ort_greedy(_session(pruned), prompt, head_size=16)
    config = updated_config(
        read_config(GENAI / name), heads=4, kv_heads=2, head_size=16, hidden=None, intermediate=None
    )
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))
    assert genai_greedy(folder, prompt) == tokens


def test_int4_masks_that_cut_a_quantization_block_are_refused_naming_the_node(analyses):
    analysis = analyses("llama-gqa-int4")
    mask = np.ones(96, dtype=bool)
    mask[5] = False
    with pytest.raises(UnsupportedGraphError) as error:
        apply_masks(analysis, {"ffn[0]": mask})
    message = str(error.value)
    assert "\n" not in message
    assert "MatMulNBits node '/model/layers.0/mlp/down_proj/MatMul_Q4'" in message and "blocks of 32" in message


def test_qwen2_int4_prunes_kv_groups_and_ffn_and_its_tied_quantized_embedding_blocks_the_hidden_stream(analyses):
    analysis = analyses("qwen2-gqa-int4")
    (hidden,) = analysis.by_kind("hidden")
    assert not hidden.prunable
    assert hidden.blockers[0].op_type == "GatherBlockQuantized" and "tied to lm_head" in hidden.blockers[0].reason
    with pytest.raises(UnsupportedGraphError, match="cannot prune hidden: GatherBlockQuantized node"):
        apply_masks(analysis, {"hidden": np.arange(64) < 32})
    masks = block_masks(analysis, seed=5)
    pruned = apply_masks(analysis, masks)  # the packed Q, K, V bias shrinks with the KV group
    reference = apply_masks(analyze(dequantized(analysis.model)), masks)
    prompt = np.load(GENAI / "qwen2-gqa-int4" / "reference.npz")["prompt"]
    got, _ = ort_greedy(_session(exact_int4(pruned)), prompt, head_size=16)
    expected, _ = ort_greedy(_session(reference), prompt, head_size=16)
    assert np.abs(got - expected).max() < TOLERANCE


# --- fused decoder attention as ONNX Runtime's tools write it: RotaryEmbedding, then MultiHeadAttention with past and
# present, or GroupQueryAttention with do_rotary=0 -------------------------------------------------------------------

HIDDEN, HEAD_SIZE, MAX_POSITIONS, VOCAB = 64, 16, 32, 40


def _fused_attention(kind: str, weights: dict[str, np.ndarray], heads: int, kv_heads: int) -> onnx.ModelProto:
    """token ids (1, S) -> embedding x (1, S, 64) -> Q, K, V projections -> RotaryEmbedding on Q and K -> fused attention over the KV cache
    (past_key_values.0.* in, present.0.* out) -> output projection. `kind`: "mha" (MultiHeadAttention, causal) or
    "gqa" (GroupQueryAttention, do_rotary=0, its sequence lengths from the attention mask as the builder does)."""
    h = onnx.helper
    ms = "com.microsoft"
    nodes = [h.make_node("Gather", ["embedding", "input_ids"], ["x"])]
    nodes += [h.make_node("MatMul", ["x", f"w{p}"], [p]) for p in "qkv"]
    nodes += [
        h.make_node("RotaryEmbedding", [p, "position_ids", "cos", "sin"], [f"{p}_rot"], domain=ms, num_heads=n)
        for p, n in (("q", heads), ("k", kv_heads))
    ]
    caches = ["past_key_values.0.key", "past_key_values.0.value"]
    presents = ["present.0.key", "present.0.value"]
    inputs = [
        h.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [1, "s"]),
        h.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, [1, "s"]),
        *(h.make_tensor_value_info(c, onnx.TensorProto.FLOAT, [1, kv_heads, "past", HEAD_SIZE]) for c in caches),
    ]
    if kind == "mha":
        nodes.append(
            h.make_node(
                "MultiHeadAttention",
                ["q_rot", "k_rot", "v", "", "", "", *caches],
                ["attn", *presents],
                domain=ms,
                num_heads=heads,
                unidirectional=1,
            )
        )
    else:
        inputs.append(h.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, [1, "total"]))
        nodes += [
            h.make_node("ReduceSum", ["attention_mask", "one"], ["length"], keepdims=0),
            h.make_node("Sub", ["length", "one"], ["last"]),
            h.make_node("Cast", ["last"], ["seqlens_k"], to=onnx.TensorProto.INT32),
            h.make_node("Shape", ["attention_mask"], ["mask_shape"]),
            h.make_node("Gather", ["mask_shape", "one_scalar"], ["total"], axis=0),
            h.make_node("Cast", ["total"], ["total_sequence_length"], to=onnx.TensorProto.INT32),
            h.make_node(
                "GroupQueryAttention", ["q_rot", "k_rot", "v", *caches, "seqlens_k", "total_sequence_length"],
                ["attn", *presents], domain=ms, num_heads=heads, kv_num_heads=kv_heads, do_rotary=0,
            ),
        ]  # fmt: skip
    nodes.append(h.make_node("MatMul", ["attn", "wo"], ["y"]))
    positions = np.arange(MAX_POSITIONS)[:, None] / 10000 ** (np.arange(HEAD_SIZE // 2) / (HEAD_SIZE // 2))
    constants = {
        **weights,
        "cos": np.cos(positions).astype(np.float32),
        "sin": np.sin(positions).astype(np.float32),
        "one": np.array([1], np.int64),
        "one_scalar": np.array(1, np.int64),
    }
    outputs = [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, "s", HIDDEN])] + [
        h.make_tensor_value_info(p, onnx.TensorProto.FLOAT, [1, kv_heads, "total", HEAD_SIZE]) for p in presents
    ]
    graph = h.make_graph(
        nodes, kind, inputs, outputs, [onnx.numpy_helper.from_array(v, k) for k, v in constants.items()]
    )
    opsets = [h.make_opsetid("", 18), h.make_opsetid(ms, 1)]
    return h.make_model(graph, opset_imports=opsets)


def _weights(heads: int, kv_heads: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {
        "wq": (HIDDEN, heads * HEAD_SIZE),
        "wk": (HIDDEN, kv_heads * HEAD_SIZE),
        "wv": (HIDDEN, kv_heads * HEAD_SIZE),
    }
    weights = {name: rng.normal(0, 0.2, shape).astype(np.float32) for name, shape in shapes.items()}
    weights["embedding"] = rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)
    weights["wo"] = rng.normal(0, 0.2, (heads * HEAD_SIZE, HIDDEN)).astype(np.float32)
    return weights


def _by_hand(weights: dict[str, np.ndarray], kept_kv: np.ndarray, repeat: int) -> dict[str, np.ndarray]:
    """The weights of the kept KV heads and of the query heads that read them, sliced in numpy."""
    query_heads = (kept_kv[:, None] * repeat + np.arange(repeat)).ravel()

    def columns(heads: np.ndarray) -> np.ndarray:
        return (heads[:, None] * HEAD_SIZE + np.arange(HEAD_SIZE)).ravel()

    return {
        "wq": weights["wq"][:, columns(query_heads)],
        "wk": weights["wk"][:, columns(kept_kv)],
        "wv": weights["wv"][:, columns(kept_kv)],
        "wo": weights["wo"][columns(query_heads)],
        "embedding": weights["embedding"],
    }


def _prefill_and_step(model: onnx.ModelProto, kind: str, ids: np.ndarray) -> list[np.ndarray]:
    """y and presents of a prefill over ids[:, :-1] (empty cache), then of one decoding step over ids[:, -1:]."""
    session = _session(model)
    kv_heads = model.graph.input[2].type.tensor_type.shape.dim[1].dim_value
    past = [np.zeros((1, kv_heads, 0, HEAD_SIZE), np.float32)] * 2
    results = []
    for start, stop in ((0, ids.shape[1] - 1), (ids.shape[1] - 1, ids.shape[1])):
        feeds = {
            "input_ids": ids[:, start:stop],
            "position_ids": np.arange(start, stop)[None],
            "past_key_values.0.key": past[0],
            "past_key_values.0.value": past[1],
        }
        if kind == "gqa":
            feeds["attention_mask"] = np.ones((1, stop), np.int64)
        y, *past = session.run(None, feeds)
        results += [y, *past]
    return results


@pytest.mark.parametrize(("kind", "heads", "kv_heads"), [("mha", 4, 4), ("gqa", 4, 2)])
def test_fused_rotary_attention_with_a_cache_prunes_like_the_same_graph_built_from_pruned_weights(
    kind, heads, kv_heads
):
    weights = _weights(heads, kv_heads, seed=heads + kv_heads)
    analysis = analyze(_fused_attention(kind, weights, heads, kv_heads))
    (group,) = analysis.by_kind("heads")
    assert (group.units, group.prunable, group.cache) == (
        kv_heads, True, ["past_key_values.0.key", "past_key_values.0.value", "present.0.key", "present.0.value"]
    )  # fmt: skip
    assert not analysis.unsupported
    mask = np.arange(kv_heads) == kv_heads - 1  # the last KV head alone: its heads sit at an offset in every axis
    pruned = apply_masks(analysis, {group.name: mask})
    kept = np.flatnonzero(mask)
    reference = _fused_attention(
        kind, _by_hand(weights, kept, heads // kv_heads), len(kept) * heads // kv_heads, len(kept)
    )
    attributes = {
        n.op_type: {a.name: a.i for a in n.attribute if a.name.endswith("num_heads")} for n in pruned.graph.node
    }
    assert attributes == {
        n.op_type: {a.name: a.i for a in n.attribute if a.name.endswith("num_heads")} for n in reference.graph.node
    }
    x = np.random.default_rng(1).integers(0, VOCAB, size=(1, 7))
    got, expected = _prefill_and_step(pruned, kind, x), _prefill_and_step(reference, kind, x)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-5
    original = _prefill_and_step(analysis.model, kind, x)
    assert np.abs(original[0] - got[0]).max() > 1e-3  # pruning changed the output


def _fused(model: onnx.ModelProto, config: transformers.PretrainedConfig, folder: Path) -> onnx.ModelProto:
    """ONNX Runtime's transformer optimizer on `model` (on optimum's Llama and Qwen2 exports it fuses the RMSNorms into
    SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization; it fuses no decoder attention)."""
    from onnxruntime.transformers.optimizer import optimize_model

    path = folder / "unfused.onnx"
    onnx.save(model, str(path))
    heads, hidden = config.num_attention_heads, config.hidden_size
    return optimize_model(str(path), model_type="gpt2", num_heads=heads, hidden_size=hidden).model


def _decoder_outputs(model: onnx.ModelProto, ids: np.ndarray) -> list[np.ndarray]:
    from compressor.decoder import detect

    session = _session(model)
    feeds = detect(model).feeds({"input_ids": ids})
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fusing_then_pruning_a_decoder_equals_pruning_then_fusing(family, tmp_path):
    torch_model = tiny_decoders.build(family)
    plain = onnx.load(str(tiny_decoders.export_optimum(torch_model, tmp_path)))
    fused = _fused(plain, torch_model.config, tmp_path)
    assert {"SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"} <= {n.op_type for n in fused.graph.node}
    plain_analysis, fused_analysis = analyze(plain), analyze(fused)
    rng = np.random.default_rng(2)
    masks = {}
    for group in plain_analysis.groups:
        if group.kind in ("heads", "ffn", "hidden"):
            mask = rng.random(group.units) < (0.8 if group.kind == "hidden" else 0.6)
            mask[0] = True
            masks[group.name] = mask
    assert {g.name for g in fused_analysis.groups if g.prunable} >= set(masks)
    pruned_then_fused = _fused(apply_masks(plain_analysis, masks), torch_model.config, tmp_path)
    fused_then_pruned = apply_masks(fused_analysis, masks)
    ids = tiny_decoders.sample_ids(2, 7)
    expected = _decoder_outputs(pruned_then_fused, ids)
    got = _decoder_outputs(fused_then_pruned, ids)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-5
    assert np.abs(_decoder_outputs(fused, ids)[0] - got[0]).max() > 1e-3  # the pruning changed the logits
