"""Torch twins of the real ONNX models, so pruning them can be checked against transformers' own pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import transformers
from onnx import numpy_helper


def torch_twin_of_optimum_export(folder: Path) -> torch.nn.Module:
    """Rebuild the transformers model of an optimum export from its config and the ONNX initializers.

    Named parameters keep their names in the export; MatMul weights are anonymous but their node names spell the
    module path (`/bert/encoder/layer.0/attention/self/query/MatMul`) and hold the transposed weight.
    """
    config = transformers.AutoConfig.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    proto = onnx.load(str(folder / "model.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            module = node.name.strip("/").replace("/", ".").removesuffix(".MatMul")
            weights[f"{module}.weight"] = weights[node.input[1]].T
    state = model.state_dict()
    missing = [name for name in state if name not in weights and not name.endswith("position_ids")]
    if missing:
        raise AssertionError(f"no ONNX tensor for {missing[:3]}")
    model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(weights[k])) if k in weights else v for k, v in state.items()}
    )
    return model


def tokenized(folder: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in batch.items()}
