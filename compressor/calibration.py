"""Calibration data: text files (TSV, CSV, JSONL) tokenized for the model, or .npz arrays, or a synthetic fallback."""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from compressor.errors import CalibrationError, CalibrationMismatchError

TEXT_COLUMN_PAIRS = [
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("text_a", "text_b"),
    ("question", "context"),
]
TEXT_COLUMNS = ["sentence", "text", "question", "review", "content", "document", "query"]
LABEL_COLUMNS = ["label", "labels", "score"]


@dataclass
class ModelInput:
    name: str
    dtype: np.dtype
    rank: int


@dataclass
class Calibration:
    """Samples to feed the model, in order; `labels` are class ids or real scores when the file has them."""

    inputs: list[ModelInput]
    texts: list[tuple[str, ...]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    tokenizer: object | None = None
    max_length: int = 128
    source: str = ""
    lengths: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.texts) if self.texts else len(next(iter(self.arrays.values())))

    @property
    def label_kind(self) -> str | None:
        if self.labels is None:
            return None
        return "class" if np.issubdtype(self.labels.dtype, np.integer) else "score"

    def batches(self, indices: Sequence[int], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Model feeds for the samples at `indices`, `batch_size` at a time (text padded per batch)."""
        for start in range(0, len(indices), batch_size):
            chosen = list(indices[start : start + batch_size])
            yield self._feeds(chosen)

    def by_length(self, indices: Sequence[int]) -> list[int]:
        """`indices` ordered by token count, so that batches pad little (the order of rows never matters to moments)."""
        lengths = self._lengths()
        return sorted(indices, key=lambda i: (lengths[i], i))

    def _lengths(self) -> np.ndarray:
        if self.lengths is None:
            if self.texts:
                columns = [list(c) for c in zip(*self.texts)]
                encoded = self.tokenizer(*columns, truncation=True, max_length=self.max_length)["input_ids"]
                self.lengths = np.array([len(ids) for ids in encoded])
            elif "attention_mask" in self.arrays:
                self.lengths = np.asarray(self.arrays["attention_mask"]).sum(axis=1)
            else:
                self.lengths = np.zeros(len(self), dtype=int)
        return self.lengths

    def _feeds(self, chosen: list[int]) -> dict[str, np.ndarray]:
        if not self.texts:
            return {i.name: self.arrays[i.name][chosen].astype(i.dtype) for i in self.inputs}
        columns = list(zip(*(self.texts[k] for k in chosen)))
        encoded = self.tokenizer(
            *[list(c) for c in columns], padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        return {i.name: np.asarray(encoded[i.name]).astype(i.dtype) for i in self.inputs}


def model_inputs(model: onnx.ModelProto) -> list[ModelInput]:
    initializers = {t.name for t in model.graph.initializer}
    return [
        ModelInput(
            v.name,
            onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type),
            len(v.type.tensor_type.shape.dim),
        )
        for v in model.graph.input
        if v.name not in initializers
    ]


def load_calibration(
    path: Path,
    model: onnx.ModelProto,
    tokenizer_path: Path | None,
    text_columns: list[str] | None = None,
    label_column: str | None = None,
    samples: int = 512,
    max_length: int = 128,
    seed: int = 0,
) -> Calibration:
    """Read `path` (.tsv, .csv, .jsonl or .npz) into a Calibration that matches the model's inputs.

    A text file with more than `samples` rows gives `samples` of them, drawn with `seed`; an .npz its first ones."""
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist")
    inputs = model_inputs(model)
    if path.suffix == ".npz":
        return _from_npz(path, inputs, samples)
    rows = _read_rows(path)
    if not rows:
        raise CalibrationError(f"calibration file {path} has no rows; give it at least one sample")
    rows = _sample(rows, samples, seed)
    columns = text_columns or _detect_text_columns(path, rows[0])
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise CalibrationError(f"{path} has no column {missing[0]!r}; its columns are {', '.join(rows[0])}")
    tokenizer = load_tokenizer(tokenizer_path, inputs)
    texts = [tuple(str(row[c]).strip() for c in columns) for row in rows]
    labels = _labels(path, rows, label_column)
    return Calibration(inputs, texts=texts, labels=labels, tokenizer=tokenizer, max_length=max_length, source=str(path))


def _sample(rows: list, samples: int, seed: int) -> list:
    """`samples` rows drawn without replacement (seeded), in file order; all of them when there are fewer."""
    if len(rows) <= samples:
        return rows
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=samples, replace=False))
    return [rows[i] for i in chosen]


def _read_rows(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path}: line {exc.lineno} is not JSON; use one JSON object per line") from exc
    if path.suffix == ".tsv":
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    raise CalibrationError(f"{path}: unknown calibration format {path.suffix!r}; use .tsv, .csv, .jsonl or .npz")


def _detect_text_columns(path: Path, row: dict) -> list[str]:
    for pair in TEXT_COLUMN_PAIRS:
        if all(c in row for c in pair):
            return list(pair)
    for name in TEXT_COLUMNS:
        if name in row:
            return [name]
    raise CalibrationError(
        f"{path}: no text column found among {', '.join(row)}; name it with --text-columns (e.g. --text-columns text)"
    )


def _labels(path: Path, rows: list[dict], label_column: str | None) -> np.ndarray | None:
    name = label_column or next((c for c in LABEL_COLUMNS if c in rows[0]), None)
    if name is None:
        return None
    if name not in rows[0]:
        raise CalibrationError(f"{path} has no label column {name!r}; its columns are {', '.join(rows[0])}")
    try:
        values = np.array([float(row[name]) for row in rows])
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{path}: labels in column {name!r} are not numbers ({exc})") from exc
    return values.astype(np.int64) if np.all(values == np.round(values)) else values


def load_tokenizer(path: Path | None, inputs: list[ModelInput]):
    """A Hugging Face tokenizer from a folder; it must produce every input the model takes."""
    if path is None or not (path / "tokenizer.json").exists() and not (path / "vocab.txt").exists():
        where = path or "the model's folder"
        raise CalibrationError(f"no tokenizer in {where}; pass --tokenizer with a folder holding tokenizer.json")
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    produced = set(tokenizer("a").keys())
    missing = [i.name for i in inputs if i.name not in produced]
    if missing:
        raise CalibrationMismatchError(
            f"the model takes {missing[0]!r}, which the tokenizer in {path} does not produce; "
            "use --tokenizer with the model's own tokenizer, or .npz calibration"
        )
    return tokenizer


def _from_npz(path: Path, inputs: list[ModelInput], samples: int) -> Calibration:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationMismatchError(f"{path} has no array {missing[0]!r}; the model's inputs are {', '.join(names)}")
    lengths = {len(arrays[n]) for n in names}
    if len(lengths) != 1 or 0 in lengths:
        raise CalibrationMismatchError(f"{path}: arrays must be non-empty and share their first dimension")
    for item in inputs:
        if arrays[item.name].ndim != item.rank:
            raise CalibrationMismatchError(
                f"{path}: array {item.name!r} has {arrays[item.name].ndim} dimensions; the model expects {item.rank}"
            )
    labels = arrays.get("label", arrays.get("labels"))
    return Calibration(
        inputs,
        arrays={n: arrays[n][:samples] for n in names},
        labels=None if labels is None else labels[:samples],
        source=str(path),
    )


def from_texts(texts: list[str], model: onnx.ModelProto, tokenizer_path: Path | None, max_length: int) -> Calibration:
    inputs = model_inputs(model)
    if not texts:
        raise CalibrationError("the calibration list of texts is empty")
    tokenizer = load_tokenizer(tokenizer_path, inputs)
    return Calibration(inputs, texts=[(t,) for t in texts], tokenizer=tokenizer, max_length=max_length, source="texts")


def from_arrays(arrays: dict[str, np.ndarray], model: onnx.ModelProto, samples: int) -> Calibration:
    inputs = model_inputs(model)
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationMismatchError(
            f"calibration arrays lack {missing[0]!r}; the model's inputs are {', '.join(names)}"
        )
    return Calibration(inputs, arrays={n: np.asarray(arrays[n])[:samples] for n in names}, source="arrays")


def synthetic(
    model: onnx.ModelProto, tokenizer_path: Path | None, samples: int, max_length: int, seed: int = 0
) -> Calibration:
    """Random word sequences from the tokenizer's vocabulary: keeps `compress` usable; no substitute for real data."""
    inputs = model_inputs(model)
    tokenizer = load_tokenizer(tokenizer_path, inputs)
    plain = [w for w in tokenizer.get_vocab() if w.isalnum() and w not in tokenizer.all_special_tokens]
    words = [w for w in plain if w.isalpha() and len(w) > 2]
    words = words if len(words) >= 100 else plain
    rng = np.random.default_rng(seed)
    texts = [(" ".join(rng.choice(words, size=int(rng.integers(4, max(5, max_length // 2))))),) for _ in range(samples)]
    return Calibration(inputs, texts=texts, tokenizer=tokenizer, max_length=max_length, source="synthetic")
