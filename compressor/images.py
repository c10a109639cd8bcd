"""Calibration and evaluation data for image models from a folder of images: one subfolder per class (labels from
`config.json`'s `label2id`, else the subfolders in sorted order), or images directly in the folder (no labels).
Images are prepared as the model's image processor describes in `preprocessor_config.json`: RGB, resized, rescaled
and normalized, channels first; without that file, resized to the image size the graph implies, scaled to [0, 1] and
normalized with mean and std 0.5 (ViT's defaults)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor.errors import CalibrationError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Preparation:
    height: int
    width: int
    resample: int  # a PIL resampling filter
    rescale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def preparation(model_folder: Path | None, image_size: int) -> Preparation:
    """How the model's image processor prepares an image, from `preprocessor_config.json` beside the model."""
    config = _json(model_folder / PROCESSOR_FILE) if model_folder is not None else None
    if config is None:
        return Preparation(image_size, image_size, 2, 1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    size = config.get("size", image_size)
    if isinstance(size, dict):
        edge = size.get("shortest_edge", image_size)
        height, width = size.get("height", edge), size.get("width", edge)
    else:
        height = width = int(size)
    return Preparation(
        int(height) if config.get("do_resize", True) else image_size,
        int(width) if config.get("do_resize", True) else image_size,
        int(config.get("resample", 2)),
        float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None,
        tuple(config["image_mean"]) if config.get("do_normalize", True) and "image_mean" in config else None,
        tuple(config["image_std"]) if config.get("do_normalize", True) and "image_std" in config else None,
    )


def read_image_folder(
    folder: Path, model_folder: Path | None, image_size: int, samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixel values (N, 3, H, W) float32, class ids or None): `samples` images drawn with `seed` when there are more."""
    images, labels = _listing(folder, _label_ids(model_folder))
    if not images:
        raise CalibrationError(f"{folder} holds no images ({', '.join(sorted(SUFFIXES))}); give a folder of images")
    if len(images) > samples:
        chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=samples, replace=False))
        images, labels = [images[i] for i in chosen], None if labels is None else [labels[i] for i in chosen]
    prepared = preparation(model_folder, image_size)
    pixels = np.stack([_prepared(path, prepared) for path in images])
    return pixels, None if labels is None else np.array(labels, dtype=np.int64)


def _listing(folder: Path, label2id: dict[str, int] | None) -> tuple[list[Path], list[int] | None]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES), None
    ids = label2id or {c.name: i for i, c in enumerate(classes)}
    unknown = [c.name for c in classes if c.name not in ids]
    if unknown:
        raise CalibrationError(
            f"{folder}: subfolder {unknown[0]!r} is not a class of the model (config.json label2id has "
            f"{', '.join(sorted(ids)[:5])}...); name subfolders after the model's classes"
        )
    found = [(p, ids[c.name]) for c in classes for p in sorted(c.iterdir()) if p.suffix.lower() in SUFFIXES]
    return [p for p, _ in found], [label for _, label in found]


def _label_ids(model_folder: Path | None) -> dict[str, int] | None:
    config = _json(model_folder / "config.json") if model_folder is not None else None
    mapping = (config or {}).get("label2id")
    return {str(k): int(v) for k, v in mapping.items()} if isinstance(mapping, dict) and mapping else None


def _prepared(path: Path, how: Preparation) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise CalibrationError("reading images needs Pillow: pip install 'mi-compressor[vision]'") from exc
    try:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((how.width, how.height), resample=how.resample)
    except (UnidentifiedImageError, OSError) as exc:
        raise CalibrationError(f"{path} is not an image Pillow can read ({type(exc).__name__}); remove it") from exc
    pixels = np.asarray(resized, dtype=np.float32)
    if how.rescale is not None:
        pixels = pixels * how.rescale
    if how.mean is not None and how.std is not None:
        pixels = (pixels - np.array(how.mean, np.float32)) / np.array(how.std, np.float32)
    return pixels.transpose(2, 0, 1)


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    return value if isinstance(value, dict) else None
