"""The pruning a mask describes, done on the torch model: the reference the ONNX rewrite must match.

Works with transformers 4.x (heads through `prune_heads`) and 5.x (which dropped `prune_heads` but reshapes
with -1, so slicing the projections is enough); `make_fixtures.py` runs it under transformers 5.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch

READS_HIDDEN = re.compile(
    r"(query|key|value|q_lin|k_lin|v_lin|intermediate\.dense|lin1|pooler\.dense|pre_classifier|classifier\.dense)$"
)
WRITES_HIDDEN = re.compile(r"(attention\.output\.dense|out_lin|layer\.\d+\.output\.dense|lin2)$")


def layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = getattr(model, model.base_model_prefix, model)
    if hasattr(base, "layers"):  # ModernBERT
        return list(base.layers)
    if hasattr(getattr(base, "encoder", None), "albert_layer_groups"):  # ALBERT: the layers every depth shares
        return [layer for group in base.encoder.albert_layer_groups for layer in group.albert_layers]
    return list(base.transformer.layer if hasattr(base, "transformer") else base.encoder.layer)


def attention_linears(layer: torch.nn.Module) -> tuple[list[torch.nn.Linear], torch.nn.Linear]:
    """(query, key, value) projections and the output projection of one layer."""
    if hasattr(layer.attention, "q_lin"):
        att = layer.attention
        return [att.q_lin, att.k_lin, att.v_lin], att.out_lin
    att = layer.attention
    return [att.self.query, att.self.key, att.self.value], att.output.dense


def ffn_linears(layer: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    if hasattr(layer, "mlp"):
        return layer.mlp.Wi, layer.mlp.Wo
    if isinstance(getattr(layer, "ffn", None), torch.nn.Linear):  # ALBERT
        return layer.ffn, layer.ffn_output
    if hasattr(layer, "ffn"):
        return layer.ffn.lin1, layer.ffn.lin2
    return layer.intermediate.dense, layer.output.dense


def slice_linear(linear: torch.nn.Linear, keep: torch.Tensor, side: str) -> None:
    """Keep output rows (`side='out'`) or input columns (`side='in'`) of a Linear layer."""
    dim = 0 if side == "out" else 1
    with torch.no_grad():
        linear.weight = torch.nn.Parameter(linear.weight.index_select(dim, keep).clone())
        if side == "out" and linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.index_select(0, keep).clone())
    if side == "out":
        linear.out_features = len(keep)
    else:
        linear.in_features = len(keep)


def prune(
    model: torch.nn.Module,
    heads: dict[int, np.ndarray] | None = None,
    ffn: dict[int, np.ndarray] | None = None,
    hidden: np.ndarray | None = None,
) -> torch.nn.Module:
    pruned = copy.deepcopy(model)
    blocks = layers(pruned)
    for index, mask in (heads or {}).items():
        _prune_heads(pruned, blocks[index], index, mask)
    for index, mask in (ffn or {}).items():
        up, down = ffn_linears(blocks[index])
        keep = torch.from_numpy(np.flatnonzero(mask))
        if hasattr(blocks[index], "mlp"):  # GeGLU: Wi writes [input | gate], both halves keep the same neurons
            keep = torch.cat([keep, keep + len(mask)])
        slice_linear(up, keep, "out")
        slice_linear(down, torch.from_numpy(np.flatnonzero(mask)), "in")
    if hidden is not None:
        _prune_hidden(pruned, torch.from_numpy(np.flatnonzero(hidden)))
    return pruned


def _prune_heads(model: torch.nn.Module, layer: torch.nn.Module, index: int, mask: np.ndarray) -> None:
    dropped = np.flatnonzero(~mask).tolist()
    if not dropped:
        return
    if hasattr(layer, "attn"):
        _prune_packed_heads(layer.attn, mask)
        return
    if hasattr(getattr(layer.attention, "self", None), "query_proj"):
        _prune_disentangled_heads(layer.attention, mask)
        return
    if hasattr(model, "prune_heads"):
        model.prune_heads({index: dropped})
        return
    projections, output = attention_linears(layer)
    width = projections[0].out_features // len(mask)
    keep = torch.from_numpy((np.flatnonzero(mask)[:, None] * width + np.arange(width)).reshape(-1))
    for linear in projections:
        slice_linear(linear, keep, "out")
    slice_linear(output, keep, "in")


def _prune_packed_heads(attention: torch.nn.Module, mask: np.ndarray) -> None:
    """ModernBERT: Wqkv writes [Q | K | V], each `num_heads` heads; Wo reads the kept heads."""
    width = attention.head_dim
    keep = (np.flatnonzero(mask)[:, None] * width + np.arange(width)).reshape(-1)
    size = len(mask) * width
    slice_linear(attention.Wqkv, torch.from_numpy(np.concatenate([keep, keep + size, keep + 2 * size])), "out")
    slice_linear(attention.Wo, torch.from_numpy(keep), "in")
    attention.num_heads = int(mask.sum())
    attention.all_head_size = attention.num_heads * width


def _prune_disentangled_heads(attention: torch.nn.Module, mask: np.ndarray) -> None:
    """DeBERTa-v2/v3: the content projections and the relative position projections (`pos_key_proj`,
    `pos_query_proj`, absent when the content ones are shared with the positions) keep the same heads."""
    self_attention = attention.self
    width = self_attention.attention_head_size
    keep = torch.from_numpy((np.flatnonzero(mask)[:, None] * width + np.arange(width)).reshape(-1))
    for name in ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"):
        if hasattr(self_attention, name):
            slice_linear(getattr(self_attention, name), keep, "out")
    slice_linear(attention.output.dense, keep, "in")
    self_attention.num_attention_heads = int(mask.sum())
    self_attention.all_head_size = self_attention.num_attention_heads * width


def _prune_hidden(model: torch.nn.Module, keep: torch.Tensor) -> None:
    """Slice the residual stream: embeddings, every LayerNorm, every projection that reads or writes it."""
    for name, module in model.named_modules():
        with torch.no_grad():
            if isinstance(module, torch.nn.Embedding):
                module.weight = torch.nn.Parameter(module.weight[:, keep].clone())
                module.embedding_dim = len(keep)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight = torch.nn.Parameter(module.weight[keep].clone())
                module.bias = torch.nn.Parameter(module.bias[keep].clone())
                module.normalized_shape = (len(keep),)
            elif isinstance(module, torch.nn.Linear) and READS_HIDDEN.search(name):
                slice_linear(module, keep, "in")
            elif isinstance(module, torch.nn.Linear) and WRITES_HIDDEN.search(name):
                slice_linear(module, keep, "out")
