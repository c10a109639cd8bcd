"""A zoo of tiny random transformers, one per model type that optimum exports (encoders, decoders, vision, speech
encoders, and Whisper's encoder): built from configs (2 layers, hidden 32, 4 heads) and exported as a new user would,
with the default task of their kind. Each model's folder also holds `calib.npz`, random inputs of the export's
signature."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import transformers

from compressor.calibration import model_inputs

VOCAB = 100
IMAGE = 32
SAMPLES = 12
TOKENS = 10
AUDIO_SAMPLES = 1600
TEXT = {"vocab_size": VOCAB, "max_position_embeddings": 64}
DECODER = {**TEXT, "num_key_value_heads": 2}
VISION = {"image_size": IMAGE, "patch_size": 8, "num_channels": 3}
SPEECH = {
    "conv_dim": (16, 16),
    "conv_stride": (5, 4),
    "conv_kernel": (10, 4),
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 4,
    "vocab_size": VOCAB,
}
TASKS = {
    "encoder": ("text-classification", transformers.AutoModelForSequenceClassification),
    "decoder": ("text-generation-with-past", transformers.AutoModelForCausalLM),
    "vision": ("image-classification", transformers.AutoModelForImageClassification),
    "speech": ("feature-extraction", transformers.AutoModel),
    "speech-seq2seq": ("automatic-speech-recognition", transformers.AutoModelForSpeechSeq2Seq),
}
# The file of an export that the sweep runs on: a speech-to-text export's encoder (its decoder is a decoder's case).
EXPORTED_FILE = {"speech-seq2seq": "encoder_model.onnx"}
WHISPER = {
    "vocab_size": VOCAB,
    "num_mel_bins": 16,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 1,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 48,
    "decoder_ffn_dim": 48,
    "max_source_positions": 12,  # 24 mel frames (exported with nb_max_frames=24), which two Convs make 12
    "max_target_positions": 16,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}


@dataclass(frozen=True)
class Entry:
    model_type: str
    kind: str  # a key of TASKS
    extra: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)  # the exporter's dummy input shapes, where its default is too large


ZOO = (
    Entry("bert", "encoder", TEXT),
    Entry("roberta", "encoder", {**TEXT, "max_position_embeddings": 66}),
    Entry("distilbert", "encoder", {**TEXT, "hidden_dim": 48}),
    Entry("albert", "encoder", {**TEXT, "embedding_size": 16}),
    Entry("electra", "encoder", {**TEXT, "embedding_size": 16}),
    Entry("xlm-roberta", "encoder", {**TEXT, "max_position_embeddings": 66}),
    Entry("camembert", "encoder", {**TEXT, "max_position_embeddings": 66}),
    Entry("mpnet", "encoder", {**TEXT, "max_position_embeddings": 66}),
    Entry("convbert", "encoder", {**TEXT, "embedding_size": 32}),
    Entry("roformer", "encoder", {**TEXT, "embedding_size": 32}),
    Entry("deberta", "encoder", TEXT),
    Entry("deberta-v2", "encoder", TEXT),
    Entry("modernbert", "encoder", {**TEXT, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    Entry("gpt2", "decoder", {**TEXT, "n_inner": 48}),
    Entry("llama", "decoder", DECODER),
    Entry("qwen2", "decoder", DECODER),
    Entry("mistral", "decoder", DECODER),
    Entry("phi", "decoder", TEXT),
    Entry("opt", "decoder", {**TEXT, "ffn_dim": 48, "word_embed_proj_dim": 32}),
    Entry("vit", "vision", VISION),
    Entry(
        "swin",
        "vision",
        {
            "image_size": IMAGE,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 2],
            "window_size": 4,
        },
    ),
    Entry("beit", "vision", {**VISION, "use_mask_token": False}),
    Entry("convnext", "vision", {"image_size": IMAGE, "num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1]}),
    Entry("wav2vec2", "speech", SPEECH),
    Entry("hubert", "speech", SPEECH),
    Entry("data2vec-audio", "speech", SPEECH),
    Entry("whisper", "speech-seq2seq", WHISPER, {"nb_max_frames": 24}),
)


def config(entry: Entry) -> transformers.PretrainedConfig:
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48}
    return transformers.AutoConfig.for_model(entry.model_type, **common, num_labels=3, **entry.extra)


def build(entry: Entry, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TASKS[entry.kind][1].from_config(config(entry)).eval()


def export(entry: Entry, folder: Path) -> Path:
    """The optimum export (opset 17, its default task for the kind) and a calibration file beside it."""
    from optimum.exporters.onnx import onnx_export_from_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(
            build(entry), folder, opset=17, task=TASKS[entry.kind][0], do_validation=False, **entry.shapes
        )
    path = folder / EXPORTED_FILE.get(entry.kind, "model.onnx")
    np.savez(folder / "calib.npz", **calibration_arrays(onnx.load(path), entry))
    return path


def calibration_arrays(model: onnx.ModelProto, entry: Entry, seed: int = 0) -> dict[str, np.ndarray]:
    """Random samples for every input calibration must give: token ids (padding at the end of some rows), images,
    or raw audio."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(TOKENS)[None, :] < rng.integers(TOKENS // 2, TOKENS + 1, size=(SAMPLES, 1))).astype(np.int64)
    arrays = {}
    for item in model_inputs(model):
        if item.name == "pixel_values":
            value = rng.standard_normal((SAMPLES, 3, IMAGE, IMAGE))
        elif item.name == "input_values":
            value = rng.standard_normal((SAMPLES, AUDIO_SAMPLES))
        elif item.name == "input_features":  # mel frames, as many as the export fixes
            fixed = [
                d.dim_value
                for d in next(v for v in model.graph.input if v.name == item.name).type.tensor_type.shape.dim
            ]
            value = rng.standard_normal((SAMPLES, *fixed[1:]))
        elif item.name == "input_ids":
            value = rng.integers(3, VOCAB, size=(SAMPLES, TOKENS)) * mask
        elif item.name == "attention_mask":
            value = mask
        elif item.name == "position_ids":
            value = np.cumsum(mask, axis=1) - 1
        else:
            value = np.zeros((SAMPLES, TOKENS))
        arrays[item.name] = value.astype(item.dtype)
    return arrays


def export_all(root: Path) -> dict[str, Path]:
    paths = {}
    for entry in ZOO:
        folder = root / entry.model_type
        folder.mkdir(parents=True, exist_ok=True)
        paths[entry.model_type] = export(copy.deepcopy(entry), folder)
    return paths
