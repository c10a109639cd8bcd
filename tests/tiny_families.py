"""Tiny random encoders of the families beyond BERT (ModernBERT, ALBERT, DeBERTa-v2 and v3, ViT), built from
transformers configs and exported by optimum; each has a structure the channel analysis must understand."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import transformers
from tiny_models import randomize_norms

FAMILIES = ("modernbert", "albert", "deberta", "deberta-v3", "vit")
VOCAB = 120
IMAGE = 32


def config(family: str) -> transformers.PretrainedConfig:
    """Hidden 64, 4 heads, FFN 96, 3 labels, no dropout."""
    common = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "num_labels": 3}
    if family == "modernbert":  # fused Wqkv, GeGLU, rotary, local/global attention, bias-free LayerNorm
        return transformers.ModernBertConfig(
            vocab_size=VOCAB,
            num_hidden_layers=3,
            max_position_embeddings=80,
            global_attn_every_n_layers=2,
            local_attention=8,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
            **common,
        )
    if family == "albert":  # one layer's weights shared by every layer, embeddings projected 32 -> 64
        return transformers.AlbertConfig(
            vocab_size=VOCAB,
            embedding_size=32,
            num_hidden_layers=3,
            max_position_embeddings=80,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout_prob=0.0,
            **common,
        )
    if family == "deberta":  # relative position embeddings projected into heads (c2p and p2c)
        return _deberta_config(common)
    if family == "deberta-v3":  # the content key/query projections also project the relative positions
        return _deberta_config({**common, "share_att_key": True, "norm_rel_ebd": "layer_norm"})
    if family == "vit":  # Conv patch embedding, class token, pixel_values
        return transformers.ViTConfig(image_size=IMAGE, patch_size=8, num_hidden_layers=2, **common)
    raise ValueError(family)


def build(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    auto = (
        transformers.AutoModelForImageClassification
        if family == "vit"
        else transformers.AutoModelForSequenceClassification
    )
    model = auto.from_config(config(family))
    randomize_norms(model)
    return model.eval()


def sample_inputs(family: str, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Images for ViT; otherwise token ids with padding at the end of some rows."""
    rng = np.random.default_rng(seed)
    if family == "vit":
        return {"pixel_values": rng.standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)}
    ids = rng.integers(5, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for row in range(1, batch):
        mask[row, seq - row :] = 0
    ids[mask == 0] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if family == "albert":
        feeds["token_type_ids"] = (np.arange(seq)[None, :] >= seq // 2).astype(np.int64).repeat(batch, 0)
    return feeds


def torch_outputs(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


def export_optimum(model: torch.nn.Module, family: str, folder: Path, opset: int = 17) -> Path:
    from optimum.exporters.onnx import onnx_export_from_model

    task = "image-classification" if family == "vit" else "text-classification"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(copy.deepcopy(model), folder, opset=opset, task=task, do_validation=False)
    return folder / "model.onnx"


class _Logits(torch.nn.Module):
    """Positional inputs in, logits out: the form `torch.onnx.export` takes."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, args))).logits


def export_dynamo(model: torch.nn.Module, family: str, path: Path) -> Path:
    """`torch.onnx.export(dynamo=True)`, opset 18, batch (and sequence) dynamic, weights inside the file."""
    feeds = sample_inputs(family, 2, 7)
    names = list(feeds)
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", min=2, max=64)
    shapes = {"args": tuple({0: batch} if name == "pixel_values" else {0: batch, 1: seq} for name in names)}
    args = tuple(torch.from_numpy(feeds[name]) for name in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(copy.deepcopy(model), names).eval(),
            args,
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=shapes,
            verbose=False,
        )
    data = path.with_name(path.name + ".data")
    if data.exists():
        onnx.save(onnx.load(str(path)), str(path))
        data.unlink()
    return path


def _deberta_config(options: dict) -> transformers.DebertaV2Config:
    """DeBERTa-v2 with relative attention both ways (content-to-position and position-to-content), no dropout."""
    return transformers.DebertaV2Config(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        max_position_embeddings=80,
        relative_attention=True,
        position_buckets=16,
        max_relative_positions=32,
        pos_att_type=["p2c", "c2p"],
        type_vocab_size=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **options,
    )
