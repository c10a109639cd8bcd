"""A Hugging Face fast tokenizer run by the `tokenizers` library alone, the way transformers runs it.

transformers' fast tokenizers are `tokenizers` objects read from tokenizer.json, wrapped in Python that sets padding
and truncation for each call. Importing transformers imports torch wherever torch is installed: 3.7 s of the 30 s
that `compress` took on minilm-sst2 went to loading its tokenizer, 0.02 s with `tokenizers` alone. Only folders whose
tokenizer class leaves tokenizer.json as it is are read here (`fast_tokenizer` says None otherwise, and the caller
loads transformers): a BERT tokenizer whose normalizer agrees with its config, and the generic fast tokenizer. Other
classes rewrite the backend on loading (Llama's adds its BOS and EOS from the config, RoBERTa's and GPT-2's their
prefix space), which this module does not repeat.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tokenizers

# the classes whose fast tokenizer reads tokenizer.json as it is (BERT's checks its normalizer: `_normalizer_agrees`)
AS_SAVED = {"BertTokenizer", "BertTokenizerFast", "PreTrainedTokenizerFast"}
SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LONGEST = int(1e30)  # transformers' model_max_length when the config gives none


class FastTokenizer:
    """The calls `compressor.calibration` makes of a transformers tokenizer: batches of texts (or of pairs) to
    `input_ids`, `token_type_ids` and `attention_mask`, with optional truncation and padding to the longest."""

    def __init__(self, backend: tokenizers.Tokenizer, config: dict) -> None:
        self.backend = backend
        self.model_max_length = int(config.get("model_max_length") or LONGEST)
        self.padding_side = config.get("padding_side", "right")
        self.truncation_side = config.get("truncation_side", "right")
        self.pad_token_type_id = int(config.get("pad_token_type_id", 0))
        self.special = {name: _content(config[name]) for name in SPECIAL if config.get(name) is not None}
        extra = [_content(t) for t in config.get("additional_special_tokens") or []]
        self.all_special_tokens = list(dict.fromkeys([*self.special.values(), *extra]))
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            self._id(name) for name in ("bos_token", "eos_token", "pad_token")
        )
        names = config.get("model_input_names") or ["input_ids", "token_type_ids", "attention_mask"]
        self.model_input_names = list(names)

    def _id(self, name: str) -> int | None:
        token = self.special.get(name)
        return None if token is None else self.backend.token_to_id(token)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab()

    def __call__(
        self,
        text: str | list[str],
        text_pair: list[str] | None = None,
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool = False,
        return_tensors: str | None = None,
        verbose: bool = True,  # taken as transformers' tokenizers take it: nothing here warns
    ) -> dict:
        texts = [text] if isinstance(text, str) else list(text)
        batch = texts if text_pair is None else list(zip(texts, text_pair))
        self._set_truncation(max_length if truncation else None)
        self._set_padding(padding)
        encoded = self.backend.encode_batch(batch, add_special_tokens=True)
        fields = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}
        result = {name: [getattr(e, fields[name]) for e in encoded] for name in self.model_input_names}
        if return_tensors == "np":
            return {name: np.array(rows, dtype=np.int64) for name, rows in result.items()}
        return {name: rows[0] for name, rows in result.items()} if isinstance(text, str) else result

    def _set_truncation(self, max_length: int | None) -> None:
        self.backend.no_truncation()
        if max_length is not None:
            self.backend.enable_truncation(max_length, strategy="longest_first", direction=self.truncation_side)

    def _set_padding(self, padding: bool) -> None:
        self.backend.no_padding()
        if padding:
            if self.pad_token_id is None:
                raise ValueError("the tokenizer has no padding token")
            self.backend.enable_padding(
                direction=self.padding_side,
                pad_id=self.pad_token_id,
                pad_type_id=self.pad_token_type_id,
                pad_token=self.special["pad_token"],
            )


def fast_tokenizer(folder: Path) -> FastTokenizer | None:
    """The folder's tokenizer, when its class reads tokenizer.json as it is saved; else None (transformers loads it).
    Raises what reading a damaged tokenizer.json raises."""
    files = {name: folder / name for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}
    if not files["tokenizer.json"].is_file() or not files["tokenizer_config.json"].is_file():
        return None
    config = json.loads(files["tokenizer_config.json"].read_text())
    if config.get("tokenizer_class") not in AS_SAVED:
        return None
    if files["special_tokens_map.json"].is_file():
        config.update(json.loads(files["special_tokens_map.json"].read_text()))
    backend = tokenizers.Tokenizer.from_file(str(files["tokenizer.json"]))
    _saved_defaults(backend, config)
    if not _as_transformers_leaves_it(backend, config):
        return None
    return FastTokenizer(backend, config)


def _saved_defaults(backend: tokenizers.Tokenizer, config: dict) -> None:
    """The settings transformers takes from tokenizer.json's truncation and padding where the config has none."""
    truncation, padding = backend.truncation or {}, backend.padding or {}
    for key, value in (
        ("truncation_side", truncation.get("direction")),
        ("padding_side", padding.get("direction")),
        ("pad_token", padding.get("pad_token")),
        ("pad_token_type_id", padding.get("pad_type_id")),
    ):
        if value is not None:
            config.setdefault(key, value)


def _as_transformers_leaves_it(backend: tokenizers.Tokenizer, config: dict) -> bool:
    """Whether transformers would load tokenizer.json unchanged: every special token of the config, and every token
    it lists as added, already an added token of the backend at its index (transformers adds those missing); the
    pre-tokenizer's prefix space the config's (transformers rewrites it); BERT's normalizer as its config asks."""
    added = {token.content: index for index, token in backend.get_added_tokens_decoder().items()}
    listed = {_content(token): int(index) for index, token in (config.get("added_tokens_decoder") or {}).items()}
    special = [_content(config[name]) for name in SPECIAL if config.get(name) is not None]
    special += [_content(token) for token in config.get("additional_special_tokens") or []]
    if any(added.get(token) != index for token, index in listed.items()) or not set(special) <= added.keys():
        return False
    state = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer else {}
    if state.get("add_prefix_space", config.get("add_prefix_space", False)) != config.get("add_prefix_space", False):
        return False
    return not config["tokenizer_class"].startswith("Bert") or _normalizer_agrees(backend, config)


def _normalizer_agrees(backend: tokenizers.Tokenizer, config: dict) -> bool:
    """Whether BERT's normalizer in tokenizer.json is the one its config asks for (transformers rebuilds it if not)."""
    state = json.loads(backend.normalizer.__getstate__()) if backend.normalizer else {}
    wanted = {
        "lowercase": config.get("do_lower_case", True),
        "strip_accents": config.get("strip_accents"),
        "handle_chinese_chars": config.get("tokenize_chinese_chars", True),
    }
    return all(state.get(key, value) == value for key, value in wanted.items())


def _content(token: str | dict) -> str:
    """A special token as tokenizer configs spell it: the string, or an AddedToken's fields."""
    return token["content"] if isinstance(token, dict) else token
