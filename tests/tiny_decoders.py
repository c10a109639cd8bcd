"""Tiny random decoder language models (GPT-2, Llama, Qwen2, Mistral) built from transformers configs, exported with
their KV cache by optimum (`text-generation-with-past`) or by `torch.onnx.export(dynamo=True)`, and pruned by hand in
torch as the reference that ONNX pruning must reproduce."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import tiny_models
import torch
import transformers
from transformers.cache_utils import DynamicCache

FAMILIES = ("gpt2", "llama", "qwen2", "mistral")
VOCAB = 120
LAYERS = 2
WORDS = [f"w{i}" for i in range(VOCAB - 4)]  # after <unk>, <s>, </s>, <pad>


def config(family: str) -> transformers.PretrainedConfig:
    """Hidden 64, head size 16, FFN 96, 2 layers; 4 query heads over 2 KV heads for the grouped-query families."""
    if family == "gpt2":  # fused c_attn (Conv1D) split into Q, K, V; LayerNorm; GELU; tied lm_head
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=LAYERS, n_head=4, n_inner=96,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=2,
        )  # fmt: skip
    common = {
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
    }  # fmt: skip
    if family == "llama":  # RMSNorm, SwiGLU, rotary, GQA, tied lm_head (as stories260k)
        return transformers.LlamaConfig(head_dim=16, tie_word_embeddings=True, **common)
    if family == "qwen2":  # as Llama, with Q/K/V biases and an untied lm_head
        return transformers.Qwen2Config(tie_word_embeddings=False, **common)
    if family == "mistral":  # as Llama, untied, sliding window off
        return transformers.MistralConfig(head_dim=16, sliding_window=None, tie_word_embeddings=False, **common)
    raise ValueError(family)


def build(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config(family), attn_implementation="eager")
    _randomize_norms(model)
    return model.eval()


def _randomize_norms(model: torch.nn.Module) -> None:
    """Fresh norms are all ones and zeros; random ones make slicing errors visible."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if "Norm" not in type(module).__name__ or weight is None:
            continue
        with torch.no_grad():
            weight.copy_(1 + 0.3 * torch.randn(weight.shape, generator=generator))
            if bias is not None:
                bias.copy_(0.3 * torch.randn(bias.shape, generator=generator))


def randomize_biases(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh projection biases are zeros, and the dynamo exporter's optimizer drops a zero bias: random ones keep
    them in the graph (GPT-2's Conv1D and Qwen2's Q, K, V biases), so their slicing is tested."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, bias in model.named_parameters():
            if name.endswith(".bias") and "Norm" not in type(model.get_submodule(name.rsplit(".", 1)[0])).__name__:
                bias.copy_(0.3 * torch.randn(bias.shape, generator=generator))
    return model


def export_optimum(model: transformers.PreTrainedModel, folder: Path, opset: int = 18) -> Path:
    """One model.onnx with past_key_values.* inputs and present.* outputs, plus config and tokenizer files."""
    from optimum.exporters.onnx import onnx_export_from_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(
            copy.deepcopy(model), folder, opset=opset, task="text-generation-with-past", do_validation=False
        )
    save_tokenizer(folder, bos=model.config.model_type != "gpt2")
    return folder / "model.onnx"


class _FlatCache(torch.nn.Module):
    """The model with its cache as flat tensors, the form `torch.onnx.export` takes: token ids, mask, positions and
    a key and a value per layer in; logits and the extended keys and values out."""

    def __init__(self, model: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache()
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits, *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values))


def export_dynamo(model: transformers.PreTrainedModel, folder: Path, opset: int = 18) -> Path:
    """`torch.onnx.export(dynamo=True)` of the model with its cache, under optimum's input and output names
    (`past_key_values.N.key/value` in, `present.N.key/value` out), weights inside model.onnx; config and tokenizer
    files beside it. Traced at batch 2, 5 new tokens over a past of 3: every size distinct and above 1, so that
    torch.export keeps each one symbolic (it specialises sizes 0 and 1). The mask's length gets a symbol of its own
    (torch.export cannot spell past + new on an input); the graph reads it at positions up to past + new."""
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch, new, past = 2, 5, 3
    layers = range(config.num_hidden_layers)
    caches = [f"past_key_values.{i}.{kind}" for i in layers for kind in ("key", "value")]
    sizes = {n: torch.export.Dim(n) for n in ("batch_size", "sequence_length", "past_sequence_length")}
    tokens = {0: sizes["batch_size"], 1: sizes["sequence_length"]}
    args = (
        torch.from_numpy(sample_ids(batch, new)),
        torch.ones(batch, past + new, dtype=torch.int64),
        torch.arange(past, past + new).repeat(batch, 1),
        [torch.randn(batch, kv_heads, past, head_dim) for _ in caches],
    )
    shapes = (
        tokens,
        {0: sizes["batch_size"], 1: torch.export.Dim("total_sequence_length")},
        tokens,
        [{0: sizes["batch_size"], 2: sizes["past_sequence_length"]}] * len(caches),
    )
    path = folder / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _FlatCache(copy.deepcopy(model)).eval(),
            args,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["input_ids", "attention_mask", "position_ids", *caches],
            output_names=["logits", *(c.replace("past_key_values", "present") for c in caches)],
            dynamic_shapes=shapes,
            verbose=False,
        )
    tiny_models.inline_external_data(path)
    config.save_pretrained(str(folder))
    save_tokenizer(folder, bos=config.model_type != "gpt2")
    return path


def save_tokenizer(folder: Path, bos: bool) -> Path:
    """A word-level tokenizer over the tiny vocabulary (<unk>=0, <s>=1, </s>=2, <pad>=3, then w0, w1, ...); with
    `bos` it starts every text with <s> (as Llama's does), else it adds nothing (as GPT-2's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=128,
    )
    fast.save_pretrained(str(folder))
    return folder


def text(documents: int, seed: int = 0) -> list[str]:
    """Random documents over the tiny vocabulary, 5 to 40 words each."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 40)))) for _ in range(documents)]


def half_pruned(path: Path, folder: Path):
    """The analysis of the exported decoder at `path`, `compress`'s masks at keep 0.5 (no recovery, calibrated on a
    text file written in `folder`) and 24 other calibration texts of 16 tokens: what recovery tests start from."""
    from compressor.calibration import from_texts
    from compressor.pipeline import compress
    from graph_passes import analyze, load_model

    calib = folder / "calib.txt"
    calib.write_text("\n<|endoftext|>\n".join(text(40, seed=9)) + "\n")
    masks = compress(path, calib, keep=0.5, samples=24, max_length=16, batch_size=8, recover=False).masks
    analysis = analyze(load_model(path))
    return analysis, masks, from_texts(text(24, seed=3), analysis.model, path.parent, 16)


def sample_ids(batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, VOCAB, size=(batch, seq), dtype=np.int64)


# --- torch reference pruning ---------------------------------------------------------------------------------


def torch_pruned(
    model: transformers.PreTrainedModel,
    heads: dict[int, np.ndarray] | None = None,
    ffn: dict[int, np.ndarray] | None = None,
) -> transformers.PreTrainedModel:
    """A copy of `model` with Linear (and Conv1D) layers sliced by hand: `heads[layer]` keeps KV heads for the
    grouped-query families (each with the query heads that read it) and attention heads for GPT-2; `ffn[layer]`
    keeps FFN neurons (gate and up columns with down rows for SwiGLU). The config follows when the counts are
    uniform over layers."""
    pruned = copy.deepcopy(model)
    blocks = _blocks(pruned)
    for index, mask in (heads or {}).items():
        _prune_attention(pruned.config, blocks[index], np.asarray(mask, dtype=bool))
    for index, mask in (ffn or {}).items():
        _prune_ffn(blocks[index], torch.from_numpy(np.flatnonzero(mask)))
    _update_config(pruned.config, blocks)
    return pruned.eval()


def _blocks(model: transformers.PreTrainedModel) -> list[torch.nn.Module]:
    base = model.transformer if hasattr(model, "transformer") else model.model
    return list(base.h if hasattr(base, "h") else base.layers)


def _rows(head_mask: np.ndarray, head_dim: int) -> torch.Tensor:
    """Output rows of a projection that writes `len(head_mask)` heads of `head_dim`: those of the kept heads."""
    return torch.from_numpy(np.flatnonzero(np.repeat(head_mask, head_dim)))


def _prune_attention(config: transformers.PretrainedConfig, block: torch.nn.Module, kept: np.ndarray) -> None:
    if hasattr(block, "attn"):  # GPT-2: c_attn writes [Q | K | V], each `heads x head_dim`
        attention = block.attn
        rows = _rows(kept, attention.head_dim)
        width = attention.split_size
        _slice_conv1d(attention.c_attn, torch.cat([rows, rows + width, rows + 2 * width]), "out")
        _slice_conv1d(attention.c_proj, rows, "in")
        attention.num_heads = int(kept.sum())
        attention.split_size = attention.embed_dim = len(rows)
        return
    attention = block.self_attn
    repeat = config.num_attention_heads // config.num_key_value_heads
    kv_rows, q_rows = _rows(kept, attention.head_dim), _rows(np.repeat(kept, repeat), attention.head_dim)
    _slice_linear(attention.q_proj, q_rows, "out")
    _slice_linear(attention.k_proj, kv_rows, "out")
    _slice_linear(attention.v_proj, kv_rows, "out")
    _slice_linear(attention.o_proj, q_rows, "in")


def _prune_ffn(block: torch.nn.Module, keep: torch.Tensor) -> None:
    if hasattr(block.mlp, "c_fc"):  # GPT-2
        _slice_conv1d(block.mlp.c_fc, keep, "out")
        _slice_conv1d(block.mlp.c_proj, keep, "in")
        return
    _slice_linear(block.mlp.gate_proj, keep, "out")
    _slice_linear(block.mlp.up_proj, keep, "out")
    _slice_linear(block.mlp.down_proj, keep, "in")
    block.mlp.intermediate_size = len(keep)


def _slice_linear(layer: torch.nn.Linear, keep: torch.Tensor, side: str) -> None:
    """Keep output rows (`side="out"`, with the bias) or input columns (`"in"`) of a Linear."""
    with torch.no_grad():
        if side == "out":
            layer.weight = torch.nn.Parameter(layer.weight[keep].clone())
            if layer.bias is not None:
                layer.bias = torch.nn.Parameter(layer.bias[keep].clone())
            layer.out_features = len(keep)
        else:
            layer.weight = torch.nn.Parameter(layer.weight[:, keep].clone())
            layer.in_features = len(keep)


def _slice_conv1d(layer: torch.nn.Module, keep: torch.Tensor, side: str) -> None:
    """GPT-2's Conv1D holds its weight as (in, out): the transpose of a Linear's."""
    with torch.no_grad():
        if side == "out":
            layer.weight = torch.nn.Parameter(layer.weight[:, keep].clone())
            layer.bias = torch.nn.Parameter(layer.bias[keep].clone())
            layer.nf = len(keep)
        else:
            layer.weight = torch.nn.Parameter(layer.weight[keep].clone())


def _update_config(config: transformers.PretrainedConfig, blocks: list[torch.nn.Module]) -> None:
    """Head counts and FFN width in the config, when every layer has the same ones (they stay as they were
    otherwise: the modules carry their own sizes)."""
    if config.model_type == "gpt2":
        heads = {b.attn.num_heads for b in blocks}
        inner = {b.mlp.c_fc.nf for b in blocks}
        if len(heads) == 1:
            config.n_head = heads.pop()
        if len(inner) == 1:
            config.n_inner = inner.pop()
        return
    head_dim = blocks[0].self_attn.head_dim
    kv_heads = {b.self_attn.k_proj.out_features // head_dim for b in blocks}
    inner = {b.mlp.down_proj.in_features for b in blocks}
    if len(kv_heads) == 1:
        repeat = config.num_attention_heads // config.num_key_value_heads
        config.num_key_value_heads = kv_heads.pop()
        config.num_attention_heads = config.num_key_value_heads * repeat
        config.head_dim = head_dim
    if len(inner) == 1:
        config.intermediate_size = inner.pop()


# --- running torch and ONNX side by side -----------------------------------------------------------------------


def torch_steps(model: transformers.PreTrainedModel, ids: np.ndarray, prefill: int) -> list[np.ndarray]:
    """Logits of a prefill of `prefill` tokens, then of each following token decoded one at a time with the cache."""
    outputs, cache = [], None
    with torch.no_grad():
        for start, end in _steps(ids.shape[1], prefill):
            out = model(
                input_ids=torch.from_numpy(ids[:, start:end]),
                attention_mask=torch.ones(ids.shape[0], end, dtype=torch.int64),
                past_key_values=cache,
                use_cache=True,
            )
            outputs.append(out.logits.numpy())
            cache = out.past_key_values
    return outputs


def onnx_steps(session, ids: np.ndarray, prefill: int) -> list[np.ndarray]:
    """The same through an ORT session of the export: empty caches first, then its presents fed back."""
    inputs = {i.name: i for i in session.get_inputs()}
    past = {
        name: np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), dtype=np.float32)
        for name, i in inputs.items()
        if name.startswith("past_key_values")
    }
    names = [o.name for o in session.get_outputs()]
    outputs = []
    for start, end in _steps(ids.shape[1], prefill):
        feeds = {"input_ids": ids[:, start:end], "attention_mask": np.ones((ids.shape[0], end), dtype=np.int64)}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.broadcast_to(np.arange(start, end), (ids.shape[0], end - start)).copy()
        results = dict(zip(names, session.run(names, feeds | past)))
        outputs.append(results["logits"])
        past = {name: results[name.replace("past_key_values", "present")] for name in past}
    return outputs


def _steps(length: int, prefill: int) -> list[tuple[int, int]]:
    return [(0, prefill)] + [(p, p + 1) for p in range(prefill, length)]


def random_masks(analysis, seed: int) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Random masks for every head and FFN group, each dropping at least one unit and keeping at least one."""
    rng = np.random.default_rng(seed)
    by_layer: dict[str, dict[int, np.ndarray]] = {"heads": {}, "ffn": {}}
    masks = {}
    for kind, found in by_layer.items():
        for group in analysis.by_kind(kind):
            mask = np.ones(group.units, dtype=bool)
            mask[rng.choice(group.units, size=int(rng.integers(1, group.units)), replace=False)] = False
            found[group.layer] = masks[group.name] = mask
    return masks, by_layer["heads"], by_layer["ffn"]
