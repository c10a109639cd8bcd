"""The plain ONNX Runtime reference for a GenAI folder's decoder: greedy decoding with the presents fed back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from compressor.genai_folder import model_path, read_config


def ort_greedy(folder: Path, prompt: np.ndarray, steps: int) -> tuple[np.ndarray, list[int]]:
    """Prefill logits and `steps` greedy tokens of a plain ORT session over the folder's decoder file, feeding
    present.* back as past_key_values.* (empty caches of the config's head size to start)."""
    head_size = read_config(folder)["model"]["decoder"]["head_size"]
    session = ort.InferenceSession(str(model_path(folder)), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    past = {
        i.name: np.zeros((1, i.shape[1], 0, head_size), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values.")
    }
    ids, tokens, prefill = prompt[None], [], None
    for _ in range(steps):
        total = len(prompt) + len(tokens)
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64), **past}
        out = dict(zip(names, session.run(None, feeds)))
        prefill = out["logits"] if prefill is None else prefill
        tokens.append(int(out["logits"][0, -1].argmax()))
        past = {k.replace("present.", "past_key_values."): v for k, v in out.items() if k.startswith("present.")}
        ids = np.array([[tokens[-1]]], np.int64)
    return prefill, tokens
