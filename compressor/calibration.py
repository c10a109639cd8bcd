"""Calibration data: text files (TSV, CSV, JSONL) tokenized for the model, or .npz arrays, or a synthetic fallback.

Decoder language models (`compressor.decoder`) also read plain text (.txt); their texts are tokenized, concatenated
and cut into sequences of `max_length` tokens, and the tool supplies their caches and position ids."""

from __future__ import annotations

import codecs
import csv
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from compressor.decoder import DecoderSignature, detect
from compressor.errors import CalibrationError, CalibrationMismatchError
from compressor.images import read_image_folder
from compressor.tokenizer import fast_tokenizer
from graph_passes.shape_probe import image_sizes
from user_errors import first_line

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
CLASS_IDS = 4096  # integer labels from 0 to this (excluded) are class ids; other numbers are scores
MIN_LENGTH = 8  # the shortest --max-length: room for the special tokens of a sentence pair and some text
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
DOCUMENT_SEPARATOR = "<|endoftext|>"  # a line of its own between documents of a .txt file (else blank lines)


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
    decoder: DecoderSignature | None = None  # a decoder's feeds get empty caches and position ids

    def __post_init__(self) -> None:
        if self.texts and getattr(self.tokenizer, "pad_token_id", None) is None:
            raise CalibrationError(
                f"the tokenizer has no padding token, which batches of the texts of {self.source} need; add a "
                '"pad_token" to its tokenizer_config.json, or use .npz calibration'
            )

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
        if self.decoder is not None:
            return self.decoder.feeds({i.name: self.arrays[i.name][chosen] for i in self.inputs})
        if not self.texts:
            return {i.name: self.arrays[i.name][chosen].astype(i.dtype) for i in self.inputs}
        columns = list(zip(*(self.texts[k] for k in chosen)))
        encoded = self.tokenizer(
            *[list(c) for c in columns], padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        return {i.name: np.asarray(encoded[i.name]).astype(i.dtype) for i in self.inputs}


def model_inputs(model: onnx.ModelProto) -> list[ModelInput]:
    """The inputs calibration data must give: all of them but those the tool supplies to a decoder."""
    decoder = detect(model)
    initializers = {t.name for t in model.graph.initializer} | (decoder.supplied if decoder else set())
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
    """Read `path` (.tsv, .csv, .jsonl or .npz; .txt too for a decoder) into a Calibration that matches the model's
    inputs.

    The whole file is checked before any row is drawn: every row has the text and label columns, every label is a
    finite number. A text file with more than `samples` rows gives `samples` of them, drawn with `seed`; an .npz
    its first ones. A decoder's samples are sequences of `max_length` tokens cut from the whole text."""
    if path.is_dir():
        return _from_image_folder(path, model, tokenizer_path, samples, seed)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist")
    inputs = model_inputs(model)
    decoder = detect(model)
    if path.suffix == ".npz":
        return _from_npz(path, inputs, samples, decoder)
    if decoder is not None:
        tokenizer = load_tokenizer(tokenizer_path, inputs, max_length)
        documents = read_documents(path, text_columns)
        return _decoder_sequences(documents, inputs, decoder, tokenizer, max_length, samples, seed, str(path))
    header, rows = _read_rows(path)
    if not rows:
        raise CalibrationError(f"calibration file {path} has no rows; give it at least one sample")
    columns = text_columns or _detect_text_columns(path, header)
    label = label_column or next((c for c in LABEL_COLUMNS if c in header), None)
    for name in [*columns, *([label] if label else [])]:
        _require_column(path, header, rows, name)
    labels = None if label is None else _labels(path, rows, label)
    chosen = _sample(len(rows), samples, seed)
    tokenizer = load_tokenizer(tokenizer_path, inputs, max_length)
    texts = [tuple(str(rows[i].values[c]).strip() for c in columns) for i in chosen]
    return Calibration(
        inputs,
        texts=texts,
        labels=None if labels is None else labels[chosen],
        tokenizer=tokenizer,
        max_length=max_length,
        source=str(path),
    )


@dataclass
class Row:
    line: int
    values: dict


def _sample(count: int, samples: int, seed: int) -> np.ndarray:
    """`samples` row indices drawn without replacement (seeded), in file order; all of them when there are fewer."""
    if count <= samples:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=samples, replace=False))


def read_text(path: Path) -> str:
    """The file as text: UTF-8, or the encoding its byte-order mark names (the mark itself dropped)."""
    raw = path.read_bytes()
    encoding, start = next(((e, len(bom)) for bom, e in BYTE_ORDER_MARKS if raw.startswith(bom)), ("utf-8", 0))
    try:
        return raw[start:].decode(encoding)
    except UnicodeDecodeError as exc:
        raise CalibrationError(
            f"{path} is not {encoding.upper()} text (byte 0x{raw[start + exc.start]:02x} at offset {start + exc.start}); "
            "save it as UTF-8"
        ) from exc


def _read_rows(path: Path, plain_text: bool = False) -> tuple[list[str], list[Row]]:
    """The column names and the rows of a text file, each row with its line number; with `plain_text`, a .txt file
    is read as one column `text`, a row per document."""
    readers = {".jsonl": _jsonl_rows, ".tsv": _tsv_rows, ".csv": _csv_rows}
    if plain_text:
        readers[".txt"] = _txt_rows
    if path.suffix not in readers:
        plain = "; .txt is read for decoder language models only" if path.suffix == ".txt" else ""
        raise CalibrationError(
            f"{path}: unknown calibration format {path.suffix!r}; use .tsv, .csv, .jsonl or .npz{plain}"
        )
    return readers[path.suffix](path, read_text(path))


def _txt_rows(path: Path, text: str) -> tuple[list[str], list[Row]]:
    """Documents separated by a line `<|endoftext|>` when the file has one, else by blank lines; each row holds a
    document, stripped, with the number of its first non-blank line."""
    lines = text.splitlines()
    by_separator = any(line.strip() == DOCUMENT_SEPARATOR for line in lines)
    blocks: list[list[tuple[int, str]]] = [[]]
    for number, line in enumerate(lines, start=1):
        if line.strip() == DOCUMENT_SEPARATOR if by_separator else not line.strip():
            blocks.append([])
        else:
            blocks[-1].append((number, line))
    rows = []
    for block in blocks:
        document = "\n".join(line for _, line in block).strip()
        if document:
            rows.append(Row(next(n for n, line in block if line.strip()), {"text": document}))
    return ["text"], rows


def read_documents(path: Path, text_columns: list[str] | None = None) -> list[str]:
    """The texts of a file for a language model: .txt documents, or the text column(s) of a .tsv, .csv or .jsonl
    (several columns joined by a line break), checked whole as for encoders."""
    if not path.is_file():
        raise CalibrationError(f"{path} does not exist")
    header, rows = _read_rows(path, plain_text=True)
    if not rows:
        raise CalibrationError(f"{path} has no text; give it at least one document")
    columns = text_columns or _detect_text_columns(path, header)
    for name in columns:
        _require_column(path, header, rows, name)
    return ["\n".join(str(row.values[c]).strip() for c in columns) for row in rows]


def token_stream(documents: list[str], tokenizer) -> np.ndarray:
    """The documents tokenized and concatenated: each as the tokenizer encodes it (a BOS first when it adds one),
    followed by EOS when it adds no BOS (GPT-2's `<|endoftext|>` between documents)."""
    encoded = tokenizer(documents, verbose=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    separate = eos is not None and not all(ids[:1] == [bos] for ids in encoded)
    return np.array([t for ids in encoded for t in [*ids, *([eos] if separate else [])]], dtype=np.int64)


def _decoder_sequences(
    documents: list[str],
    inputs: list[ModelInput],
    decoder: DecoderSignature,
    tokenizer,
    max_length: int,
    samples: int,
    seed: int,
    source: str,
) -> Calibration:
    """`samples` sequences of `max_length` tokens (drawn with `seed` when there are more), cut from the documents'
    token stream; the tail shorter than a sequence is left out."""
    stream = token_stream(documents, tokenizer)
    count = len(stream) // max_length
    if count == 0:
        raise CalibrationError(
            f"{source} gives {len(stream)} tokens, fewer than one sequence of --max-length {max_length}; "
            "give more text or a smaller --max-length"
        )
    sequences = stream[: count * max_length].reshape(count, max_length)[_sample(count, samples, seed)]
    arrays = {"input_ids": sequences, "attention_mask": np.ones_like(sequences)}
    return Calibration(
        inputs,
        arrays={i.name: arrays[i.name] for i in inputs},
        tokenizer=tokenizer,
        max_length=max_length,
        source=source,
        decoder=decoder,
    )


def _jsonl_rows(path: Path, text: str) -> tuple[list[str], list[Row]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path}: line {number} is not JSON; use one JSON object per line") from exc
        if not isinstance(value, dict):
            raise CalibrationError(f"{path}: line {number} is not a JSON object; use one object per line")
        rows.append(Row(number, {k: v for k, v in value.items() if v is not None}))
    return (list(rows[0].values) if rows else []), rows


def _tsv_rows(path: Path, text: str) -> tuple[list[str], list[Row]]:
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not numbered:
        return [], []
    header = numbered[0][1].split("\t")
    rows = []
    for number, line in numbered[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise CalibrationError(
                f"{path}: line {number} has {len(fields)} tab-separated fields and the header {len(header)}; "
                "fix that line (a tab inside a text, or a missing field)"
            )
        rows.append(Row(number, dict(zip(header, fields))))
    return header, rows


def _csv_rows(path: Path, text: str) -> tuple[list[str], list[Row]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
        rows = []
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise CalibrationError(
                    f"{path}: line {reader.line_num} has {len(fields)} fields and the header {len(header)}; "
                    "fix that line (quote texts that hold commas)"
                )
            rows.append(Row(reader.line_num, dict(zip(header, fields))))
    except csv.Error as exc:
        raise CalibrationError(f"{path}: line {reader.line_num} is not valid CSV ({exc}); fix its quoting") from exc
    return header, rows


def _require_column(path: Path, header: list[str], rows: list[Row], name: str) -> None:
    if name not in header:
        raise CalibrationError(f"{path} has no column {name!r}; its columns are {', '.join(header)}")
    lacking = next((row for row in rows if name not in row.values), None)
    if lacking is not None:
        raise CalibrationError(f"{path}: line {lacking.line} has no {name!r}; every row needs the same columns")


def _detect_text_columns(path: Path, header: list[str]) -> list[str]:
    for pair in TEXT_COLUMN_PAIRS:
        if all(c in header for c in pair):
            return list(pair)
    for name in TEXT_COLUMNS:
        if name in header:
            return [name]
    raise CalibrationError(
        f"{path}: no text column found among {', '.join(header)}; name it with --text-columns (e.g. --text-columns text)"
    )


def _labels(path: Path, rows: list[Row], name: str) -> np.ndarray:
    """Class ids (integers from 0 to CLASS_IDS - 1) or real scores (anything else that is a finite number)."""
    values = np.empty(len(rows))
    for index, row in enumerate(rows):
        try:
            values[index] = float(row.values[name])
        except (TypeError, ValueError) as exc:
            raise CalibrationError(
                f"{path}: line {row.line}: label {row.values[name]!r} in column {name!r} is not a number"
            ) from exc
        if not np.isfinite(values[index]):
            raise CalibrationError(f"{path}: line {row.line}: label {row.values[name]!r} is not a finite number")
    is_class = np.all(values == np.round(values)) and values.min() >= 0 and values.max() < CLASS_IDS
    return values.astype(np.int64) if is_class else values


def has_tokenizer(path: Path | None) -> bool:
    return path is not None and ((path / "tokenizer.json").exists() or (path / "vocab.txt").exists())


def load_tokenizer(path: Path | None, inputs: list[ModelInput], max_length: int | None = None):
    """A Hugging Face tokenizer from a folder (run by `tokenizers` alone where transformers would run tokenizer.json
    as saved: `compressor.tokenizer`); it must produce every input the model takes, and `max_length` must not pass
    the longest sequence it declares."""
    if not has_tokenizer(path):
        where = path or "the model's folder"
        raise CalibrationError(f"no tokenizer in {where}; pass --tokenizer with a folder holding tokenizer.json")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = fast_tokenizer(path) or _transformers_tokenizer(path)
            produced = set(tokenizer("a").keys())
    except Exception as exc:  # any failure to read the user's tokenizer files is theirs to fix
        raise CalibrationError(
            f"the tokenizer in {path} cannot be loaded ({type(exc).__name__}: {first_line(exc)}); "
            "pass --tokenizer with the model's own tokenizer folder"
        ) from exc
    missing = [i.name for i in inputs if i.name not in produced]
    if missing:
        raise CalibrationMismatchError(
            f"the model takes {missing[0]!r}, which the tokenizer in {path} does not produce; "
            "use --tokenizer with the model's own tokenizer, or .npz calibration"
        )
    longest = getattr(tokenizer, "model_max_length", None)
    if max_length is not None and isinstance(longest, int) and max_length > longest:
        raise CalibrationError(
            f"--max-length {max_length} is longer than the model's {longest} tokens; use at most {longest}"
        )
    return tokenizer


def _transformers_tokenizer(path: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(path))


def _from_npz(path: Path, inputs: list[ModelInput], samples: int, decoder: DecoderSignature | None) -> Calibration:
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # numpy raises many types for a damaged or foreign file
        raise CalibrationError(
            f"{path} is not a readable .npz ({type(exc).__name__}); write it with numpy.savez, one array per input"
        ) from exc
    if decoder is not None and "input_ids" in arrays:  # a decoder's mask defaults to all tokens
        arrays.setdefault("attention_mask", np.ones_like(arrays["input_ids"]))
    checked = _check_arrays(arrays, inputs, str(path))
    labels = arrays.get("label", arrays.get("labels"))
    if labels is not None and (labels.ndim != 1 or len(labels) != len(next(iter(checked.values())))):
        raise CalibrationMismatchError(f"{path}: 'label' must hold one number per sample")
    if labels is not None and (labels.dtype.kind not in "biuf" or not np.isfinite(labels).all()):
        raise CalibrationError(f"{path}: 'label' must hold finite numbers")
    return Calibration(
        inputs,
        arrays={n: a[:samples] for n, a in checked.items()},
        labels=None if labels is None else labels[:samples],
        source=str(path),
        decoder=decoder,
    )


def _check_arrays(arrays: dict, inputs: list[ModelInput], where: str) -> dict[str, np.ndarray]:
    """One non-empty numeric array per model input, of the input's rank, all with the same number of samples."""
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationMismatchError(
            f"{where} has no array {missing[0]!r}; the model's inputs are {', '.join(names)}"
        )
    checked = {}
    for item in inputs:
        array = np.asarray(arrays[item.name])
        if array.ndim != item.rank:
            raise CalibrationMismatchError(
                f"{where}: array {item.name!r} has {array.ndim} dimensions; the model expects {item.rank}"
            )
        if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
            raise CalibrationMismatchError(f"{where}: array {item.name!r} must hold finite numbers, not {array.dtype}")
        checked[item.name] = array
    lengths = {len(a) for a in checked.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise CalibrationMismatchError(f"{where}: arrays must be non-empty and share their first dimension")
    return checked


def from_texts(texts: list[str], model: onnx.ModelProto, tokenizer_path: Path | None, max_length: int) -> Calibration:
    inputs = model_inputs(model)
    if not texts:
        raise CalibrationError("the calibration list of texts is empty")
    if not all(isinstance(t, str) for t in texts):
        raise CalibrationError("calibration texts must be strings")
    tokenizer = load_tokenizer(tokenizer_path, inputs, max_length)
    decoder = detect(model)
    if decoder is not None:
        return _decoder_sequences(texts, inputs, decoder, tokenizer, max_length, len(texts), 0, "texts")
    return Calibration(inputs, texts=[(t,) for t in texts], tokenizer=tokenizer, max_length=max_length, source="texts")


def from_arrays(arrays: dict[str, np.ndarray], model: onnx.ModelProto, samples: int) -> Calibration:
    inputs = model_inputs(model)
    decoder = detect(model)
    if decoder is not None and "input_ids" in arrays:  # a decoder's mask defaults to all tokens
        arrays = {"attention_mask": np.ones_like(arrays["input_ids"]), **arrays}
    checked = _check_arrays(arrays, inputs, "the calibration arrays")
    return Calibration(inputs, arrays={n: a[:samples] for n, a in checked.items()}, source="arrays", decoder=decoder)


def synthetic(
    model: onnx.ModelProto, tokenizer_path: Path | None, samples: int, max_length: int, seed: int = 0
) -> Calibration:
    """Random word sequences from the tokenizer's vocabulary: keeps `compress` usable; no substitute for real data.
    A decoder gets `samples` sequences of `max_length` tokens cut from as many texts of `max_length` words."""
    inputs = model_inputs(model)
    tokenizer = load_tokenizer(tokenizer_path, inputs, max_length)
    plain = [w for w in tokenizer.get_vocab() if w.isalnum() and w not in tokenizer.all_special_tokens]
    words = [w for w in plain if w.isalpha() and len(w) > 2]
    words = words if len(words) >= 100 else plain
    rng = np.random.default_rng(seed)
    decoder = detect(model)
    if decoder is not None:
        texts = [" ".join(rng.choice(words, size=max_length)) for _ in range(samples)]
        return _decoder_sequences(texts, inputs, decoder, tokenizer, max_length, samples, seed, "synthetic")
    texts = [(" ".join(rng.choice(words, size=int(rng.integers(4, max(5, max_length // 2))))),) for _ in range(samples)]
    return Calibration(inputs, texts=texts, tokenizer=tokenizer, max_length=max_length, source="synthetic")


def from_signature(
    model: onnx.ModelProto, probed: dict[str, np.ndarray], folder: Path | None, samples: int, max_length: int, seed: int
) -> Calibration:
    """Random inputs shaped as the graph ran in the shape probe (`probed`: its feeds by input name), for a model
    without a tokenizer: token ids below the vocabulary size (config.json's `vocab_size` beside the model, else the
    rows of the table the ids index), masks of ones, other integers zeros, floats (pixels) standard normal; token
    sequences of `max_length` (at most 64) positions. Keeps `compress` usable; no substitute for real data."""
    rng = np.random.default_rng(seed)
    length = min(max_length, 64)
    bounds = index_bounds(model, _config_vocab(folder))
    arrays = {}
    for item in model_inputs(model):
        shape = [samples, *probed[item.name].shape[1:]]
        if np.issubdtype(item.dtype, np.floating):
            arrays[item.name] = rng.standard_normal(shape).astype(item.dtype)
            continue
        shape[1:2] = [length] if item.rank == 2 else shape[1:2]
        if "mask" in item.name:
            arrays[item.name] = np.ones(shape, dtype=item.dtype)
        elif item.name in bounds:
            arrays[item.name] = rng.integers(0, bounds[item.name], size=shape).astype(item.dtype)
        else:
            arrays[item.name] = np.zeros(shape, dtype=item.dtype)
    found = from_arrays(arrays, model, samples)
    found.source = "synthetic (from the graph's inputs)"
    return found


def _config_vocab(folder: Path | None) -> int | None:
    config = None if folder is None else folder / "config.json"
    if config is None or not config.is_file():
        return None
    try:
        value = json.loads(read_text(config)).get("vocab_size")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def index_bounds(model: onnx.ModelProto, vocab: int | None = None) -> dict[str, int]:
    """For inputs that index a table (Gather from an initializer): how many rows they may index."""
    tables = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    graph_inputs = {v.name for v in model.graph.input}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in tables:
            index = node.input[1]
            if index in graph_inputs:
                bounds[index] = min(bounds.get(index, tables[node.input[0]]), tables[node.input[0]])
    if vocab is not None and "input_ids" in bounds:
        bounds["input_ids"] = min(bounds["input_ids"], vocab)
    return bounds


def _from_image_folder(path: Path, model: onnx.ModelProto, folder: Path | None, samples: int, seed: int) -> Calibration:
    """An image model's samples from a folder of images (`compressor.images`), at the graph's image size."""
    inputs = model_inputs(model)
    if len(inputs) != 1 or inputs[0].rank != 4 or not np.issubdtype(inputs[0].dtype, np.floating):
        raise CalibrationError(
            f"{path} is a folder: folders of images calibrate image models (one pixel input); give a calibration file"
        )
    pixels, labels = read_image_folder(path, folder, _image_size(model, inputs[0].name), samples, seed)
    return Calibration(inputs, arrays={inputs[0].name: pixels.astype(inputs[0].dtype)}, labels=labels, source=str(path))


def _image_size(model: onnx.ModelProto, name: str) -> int:
    """The square image size: fixed in the graph's input, else the most plausible one the graph implies."""
    dims = next(v.type.tensor_type.shape.dim for v in model.graph.input if v.name == name)
    fixed = [d.dim_value for d in dims[2:] if d.HasField("dim_value") and d.dim_value > 0]
    sizes = fixed or image_sizes(model)
    if not sizes:
        raise CalibrationError(f"the graph does not tell the image size of {name!r}; give .npz calibration instead")
    return sizes[0]
