"""Tiny random transformer encoders built from transformers configs and exported to ONNX in every supported style."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import transformers

ARCHS = ("bert", "roberta", "distilbert")
HEADS = ("classifier", "encoder")
VOCAB = 120
TYPE_VOCAB = {"bert": 2, "roberta": 1, "distilbert": 0}


@dataclass(frozen=True)
class Spec:
    arch: str
    head: str = "classifier"
    layers: int = 2
    seed: int = 0


def build(spec: Spec) -> torch.nn.Module:
    """A random model of the given architecture: hidden 64, 4 heads, FFN 96, 3 labels."""
    torch.manual_seed(spec.seed)
    common = dict(vocab_size=VOCAB, max_position_embeddings=80, num_labels=3)
    if spec.arch == "distilbert":
        config = transformers.DistilBertConfig(dim=64, n_layers=spec.layers, n_heads=4, hidden_dim=96, **common)
    else:
        config_cls = transformers.BertConfig if spec.arch == "bert" else transformers.RobertaConfig
        config = config_cls(
            hidden_size=64,
            num_hidden_layers=spec.layers,
            num_attention_heads=4,
            intermediate_size=96,
            type_vocab_size=max(TYPE_VOCAB[spec.arch], 1),
            **common,
        )
    auto = transformers.AutoModelForSequenceClassification if spec.head == "classifier" else transformers.AutoModel
    model = auto.from_config(config)
    randomize_norms(model)
    return model.eval()


def randomize_norms(model: torch.nn.Module) -> None:
    """Fresh LayerNorms are all ones and zeros; random ones make slicing errors visible."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            with torch.no_grad():
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                if module.bias is not None:  # bias-free LayerNorm (ModernBERT)
                    module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))


def input_names(arch: str) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if TYPE_VOCAB[arch] > 1 else [])


def output_names(head: str) -> list[str]:
    return ["logits"] if head == "classifier" else ["last_hidden_state"]


def sample_inputs(arch: str, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids with padding at the end of some rows, so masks matter."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for row in range(1, batch):
        mask[row, seq - row :] = 0
    ids[mask == 0] = 1 if arch == "roberta" else 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if TYPE_VOCAB[arch] > 1:
        types = np.zeros_like(ids)
        types[:, seq // 2 :] = 1
        feeds["token_type_ids"] = types
    return feeds


def torch_outputs(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


class _Wrapper(torch.nn.Module):
    """Positional inputs and a single tensor output, as torch.onnx.export wants."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, args)))
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def export_torch(model: torch.nn.Module, spec: Spec, path: Path, opset: int, dynamo: bool) -> Path:
    names = input_names(spec.arch)
    feeds = sample_inputs(spec.arch, 2, 7)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    wrapper = _Wrapper(model, names).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", max=64)
            shapes = {"args": tuple({0: batch, 1: seq} for _ in names)}
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=names,
                output_names=output_names(spec.head),
                dynamic_shapes=shapes,
                verbose=False,
            )
        else:
            axes = {n: {0: "batch", 1: "sequence"} for n in names}
            axes[output_names(spec.head)[0]] = (
                {0: "batch"} if spec.head == "classifier" else {0: "batch", 1: "sequence"}
            )
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=output_names(spec.head),
                dynamic_axes=axes,
            )
    inline_external_data(path)
    return path


def inline_external_data(path: Path) -> None:
    """The dynamo exporter may write weights beside the model; keep tiny models in one file."""
    data = path.with_name(path.name + ".data")
    if data.exists():
        onnx.save(onnx.load(str(path)), str(path))
        data.unlink()


def export_optimum(model: torch.nn.Module, spec: Spec, folder: Path, opset: int) -> Path:
    from optimum.exporters.onnx import onnx_export_from_model

    task = "text-classification" if spec.head == "classifier" else "feature-extraction"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(copy.deepcopy(model), folder, opset=opset, task=task, do_validation=False)
    return folder / "model.onnx"


EXPORTS = {
    "optimum-opset14": lambda m, s, d: export_optimum(m, s, d, 14),
    "optimum-opset17": lambda m, s, d: export_optimum(m, s, d, 17),
    "torchscript-opset14": lambda m, s, d: export_torch(m, s, d / "model.onnx", 14, dynamo=False),
    "torchscript-opset17": lambda m, s, d: export_torch(m, s, d / "model.onnx", 17, dynamo=False),
    "dynamo-opset18": lambda m, s, d: export_torch(m, s, d / "model.onnx", 18, dynamo=True),
}


WORDS = [f"w{i}" for i in range(VOCAB - 5)]


def save_tokenizer(folder: Path) -> Path:
    """A real WordPiece tokenizer over the tiny vocabulary ([PAD]=0 ... then w0, w1, ...), saved into `folder`."""
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))
    return folder


def sentences(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """Random sentences over the tiny vocabulary; label 1 when w7 occurs, so labels follow the text."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        words = rng.choice(WORDS, size=int(rng.integers(3, 14)))
        rows.append((" ".join(words), int("w7" in words)))
    return rows
