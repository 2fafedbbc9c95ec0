"""Which features a model reads: the feature extractor's record, from the HDF5 attributes that
`fsan extract` writes, through the prepared store's manifest, into the checkpoint.

A record is a dict of plain values (str, int, float, lists of floats), so a checkpoint that
holds it still loads with `weights_only=True`:

    kind        "clip-image": one CLIP image embedding per sampled frame
    library     "transformers" (CLIPVisionModelWithProjection)
    model       the Hugging Face id (openai/clip-vit-base-patch32) or the --weights folder
    sha256      checksum of the vision weights as loaded (`weights_checksum`): the identity
    image_size  side of the square crop, pixels
    mean, std   the per-channel normalisation (RGB, after scaling to [0, 1])
    dim         feature dimension D
    fps         frames sampled per second of video: rows per second

In an HDF5 file each video's (T, D) dataset carries them as attributes `extractor` (the kind),
`extractor_<key>` (the others) and `fps`, beside `duration`. Official C3D, I3D or VGG feature
files carry none: a checkpoint trained on them records None.

This module needs neither PyAV nor transformers (fsan_cli/video/encode.py does the extraction).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fsan_cli.core.errors import FsanError

KIND = "clip-image"
KEYS = ("library", "model", "sha256", "image_size", "mean", "std", "dim")
# what makes two extractors give the same features (the model's name or path does not)
IDENTITY = ("kind", "sha256", "image_size", "mean", "std", "fps")

FPS_RANGE = (0.01, 120.0)  # frames per second `fsan extract --fps` accepts


def to_attrs(record: Mapping[str, Any]) -> dict[str, Any]:
    """The HDF5 attributes of a record."""
    attrs: dict[str, Any] = {"extractor": record["kind"], "fps": float(record["fps"])}
    for key in KEYS:
        value = record[key]
        attrs[f"extractor_{key}"] = (
            np.asarray(value, np.float64) if isinstance(value, list) else value
        )
    return attrs


def from_attrs(attrs: Mapping[str, Any], where: str = "a feature file") -> dict[str, Any] | None:
    """The record in HDF5 attributes, as plain values, checked (`check`); None where there is
    none. `where` names the dataset in messages."""
    if "extractor" not in attrs:
        return None
    record: dict[str, Any] = {"kind": _plain(attrs["extractor"]), "fps": _plain(attrs.get("fps"))}
    for key in KEYS:
        record[key] = _plain(attrs.get(f"extractor_{key}"))
    return check(record, where)


def check(record: Any, where: str) -> dict[str, Any] | None:
    """The one check of an extractor record, wherever it is read (an HDF5 file's attributes, a
    store's manifest, a checkpoint): None stays None; anything but a complete record of the
    documented fields and types is a FsanError naming `where`. The record as plain values."""
    if record is None:
        return None
    fix = ("Extract the features again with `fsan extract` (and prepare and train on them), "
           "or use a file whose record fsan wrote")
    if not isinstance(record, Mapping):
        raise FsanError(f"{where} holds a damaged extractor record (a {type(record).__name__}, "
                        "not a table of fields)", fix)
    problems = []
    out: dict[str, Any] = {}
    for key in ("kind", "library", "model", "sha256"):
        value = record.get(key)
        if not isinstance(value, str) or not value:
            problems.append(f"{key} is {value!r}, not a name")
        out[key] = value
    for key in ("image_size", "dim"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            problems.append(f"{key} is {value!r}, not a positive whole number")
        out[key] = value
    fps = record.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.number) or not (
        np.isfinite(fps) and FPS_RANGE[0] <= fps <= FPS_RANGE[1]
    ):  # fsan extract samples at most this often: 1e9 frames per second would never end
        problems.append(f"fps is {fps!r}, not frames per second in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}]")
    else:
        fps = float(fps)
    out["fps"] = fps
    for key in ("mean", "std"):
        value = record.get(key)
        try:
            numbers = [float(v) for v in value]  # type: ignore[union-attr]
            ok = len(numbers) == 3 and all(np.isfinite(numbers)) and (key == "mean" or min(numbers) > 0)
        except (TypeError, ValueError):
            numbers, ok = value, False
        if not ok or isinstance(value, str | bytes):
            problems.append(f"{key} is {value!r}, not 3 channel values")
        out[key] = numbers
    if problems:
        raise FsanError(f"{where} holds a damaged extractor record ({'; '.join(problems[:3])})", fix)
    return {**out, "image_size": int(out["image_size"]), "dim": int(out["dim"])}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [float(v) for v in value.reshape(-1)]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two records give the same features (None: no record, e.g. official C3D)."""
    if a is None or b is None:
        return a is None and b is None
    for key in IDENTITY:
        x, y = a.get(key), b.get(key)
        if isinstance(x, list | float) or isinstance(y, list | float):
            if not np.allclose(
                np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0, atol=1e-9
            ):
                return False
        elif x != y:
            return False
    return True


def describe(record: Mapping[str, Any] | None) -> str:
    if record is None:
        return "features without a recorded extractor (official C3D, I3D or VGG features)"
    return (
        f"CLIP image features of {record['model']} (weights sha256 {str(record['sha256'])[:12]}, "
        f"{record['image_size']} px, {record['fps']:g} frames/s, {record['dim']}-d)"
    )


def of_datasets(path: Path, names: Iterable[str]) -> dict[str, Any] | None:
    """The one extractor of the datasets `names` in the HDF5 file `path` (None where none has a
    record); videos of different extractors, or some with and some without, are an error."""

    found: dict[str, Any] | None = None
    first = None
    with h5py.File(path, "r") as h5:
        for name in names:
            record = from_attrs(h5[name].attrs, f"{path}:{h5[name].name}")
            if first is None:
                found, first = record, name
            elif not same(record, found):
                raise FsanError(
                    f"{path} mixes features: '{first}' holds {describe(found)}, '{name}' holds "
                    f"{describe(record)}",
                    "Extract every video with the same extractor (one `fsan extract --out` file)",
                )
    return found


def file_checksum(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where `fsan ground VIDEO` keeps the features it extracted: $XDG_CACHE_HOME/fsan/features
    (~/.cache/fsan/features by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fsan" / "features"


def cache_path(video: Path, record: Mapping[str, Any]) -> Path:
    """The cached features of `video` under `record`: named by the sha256 of the video's bytes
    and the extractor's identity (so an edited file or another extractor is a new entry), then
    by the video's name (its id in the answers: a copy under another name has its own entry)."""
    identity = json.dumps({k: record.get(k) for k in IDENTITY}, sort_keys=True)
    key = hashlib.sha256(f"{file_checksum(video)}\n{identity}".encode()).hexdigest()
    name = hashlib.sha256(Path(video).stem.encode()).hexdigest()[:16]
    return cache_dir() / f"{key}.{name}.h5"


def cache_entries(path: Path) -> list[Path]:
    """The other entries of the same bytes and extractor as the entry `path` (other names)."""
    key = path.name.split(".", 1)[0]
    return sorted(p for p in path.parent.glob(f"{key}.*.h5") if p != path) if path.parent.is_dir() else []


def is_local(model: str) -> bool:
    """Whether a record's `model` is a folder (`--weights`, recorded resolved) rather than a
    Hugging Face id (`org/name`)."""
    return Path(model).is_absolute() or model.startswith(("./", "../", "~")) or "\\" in model
