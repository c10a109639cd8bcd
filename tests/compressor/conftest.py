"""A tiny BERT classifier exported by optimum, with a real tokenizer and labelled calibration files beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    spec = tiny_models.Spec("bert", "classifier")
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_models.export_optimum(tiny_models.build(spec), spec, folder, 17)
    tiny_models.save_tokenizer(folder)
    rows = tiny_models.sentences(120)
    (folder / "calib.tsv").write_text("sentence\tlabel\n" + "".join(f"{t} \t{y}\n" for t, y in rows))
    (folder / "calib.csv").write_text("id,text,label\n" + "".join(f"{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    (folder / "calib.jsonl").write_text("".join(json.dumps({"text": t, "score": y + 0.5}) + "\n" for t, y in rows))
    return folder
