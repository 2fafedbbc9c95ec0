"""A dataset's prepared store by name: the one under the data folder, the embedded synthetic
benchmark generated on first use."""

from __future__ import annotations

from pathlib import Path

from fsan_cli.core.settings import load_settings
from fsan_cli.data.store import Store, load_store, store_exists
from fsan_cli.data.synthetic import ensure_synthetic


def open_store(dataset: str, data_dir: Path, clips: int, mmap: bool = False) -> Store:
    """The prepared store of `dataset` under `data_dir`; the synthetic one is generated on
    first use."""
    if dataset == "synthetic":
        return load_store(ensure_synthetic(data_dir, clips=clips), mmap=mmap)
    return load_store(data_dir / dataset, mmap=mmap)


def read_store(dataset: str, data_dir: Path, clips: int | None = None) -> Store:
    """The store to score on, as it is (memory-mapped); the embedded synthetic one is generated
    first when absent, with the preset's N_v, or `clips` (a checkpoint's) where given."""
    path = Path(data_dir) / dataset
    if dataset == "synthetic" and (clips is not None or not store_exists(path)):
        return open_store(dataset, data_dir, clips or load_settings(dataset).data.clips, mmap=True)
    return load_store(path, mmap=True)
