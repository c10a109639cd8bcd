"""`compressor.tokenizer` runs tokenizer.json as transformers' fast tokenizers run it: the same ids, token types and
masks, truncated and padded alike, and the same special tokens; the folders that transformers would rewrite on loading
are left to transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_decoders
import tiny_models
import transformers

from compressor.tokenizer import fast_tokenizer

SENTENCES = [
    "A gripping, beautifully SHOT film.",
    "Café au lait, naïve résumé and 東京 in one breath",
    "it 's a bore",
    "the movie goes on and on and on and on and on and on and on and on and on and on and on and on and on, forever",
]


def _folder(kind: str, tmp_path: Path, shared_model_dir: Path) -> tuple[Path, list[str]]:
    if kind == "minilm-sst2":
        return shared_model_dir, SENTENCES
    if kind == "tiny-bert":
        return tiny_models.save_tokenizer(tmp_path), [" ".join(tiny_models.WORDS[i : i + 9 * i + 3]) for i in range(4)]
    words = tiny_decoders.text(4, seed=5)
    return tiny_decoders.save_tokenizer(tmp_path, bos=kind == "decoder-bos"), words


@pytest.mark.parametrize("kind", ["minilm-sst2", "tiny-bert", "decoder-bos", "decoder-plain"])
def test_the_tokenizer_encodes_as_transformers_does(kind, tmp_path, shared_model_dir):
    folder, texts = _folder(kind, tmp_path, shared_model_dir)
    fast, reference = fast_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    assert fast is not None
    calls = [
        ((texts,), {}),
        ((texts,), {"truncation": True, "max_length": 12}),
        ((texts,), {"padding": True, "truncation": True, "max_length": 12, "return_tensors": "np"}),
        ((texts, texts[::-1]), {"padding": True, "truncation": True, "max_length": 16, "return_tensors": "np"}),
        (("a",), {}),
    ]
    for args, options in calls:
        want, have = dict(reference(*args, **options)), fast(*args, **options)
        assert have.keys() == want.keys()
        for name in want:
            if isinstance(want[name], np.ndarray):
                assert have[name].dtype == want[name].dtype
                np.testing.assert_array_equal(have[name], want[name])
            else:
                assert have[name] == want[name], name
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "model_max_length"):
        assert getattr(fast, name) == getattr(reference, name), name
    assert set(fast.all_special_tokens) == set(reference.all_special_tokens)
    assert fast.get_vocab() == reference.get_vocab()


def test_folders_that_transformers_rewrites_are_left_to_it(tmp_path, shared_model_dir):
    """A Llama tokenizer (its class adds BOS and EOS from the config), a BERT config that asks for another normalizer
    than tokenizer.json's, and a special token that tokenizer.json lacks: None, so transformers loads them."""
    stories = shared_model_dir.parent / "stories260k"
    assert fast_tokenizer(stories) is None
    cased = tmp_path / "cased"
    shutil.copytree(shared_model_dir, cased, ignore=shutil.ignore_patterns("*.onnx*"))
    config = json.loads((cased / "tokenizer_config.json").read_text())
    (cased / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    assert fast_tokenizer(cased) is None
    (cased / "tokenizer_config.json").write_text(json.dumps({**config, "additional_special_tokens": ["<new>"]}))
    assert fast_tokenizer(cased) is None
    (cased / "tokenizer_config.json").write_text(json.dumps(config))
    assert fast_tokenizer(cased) is not None
