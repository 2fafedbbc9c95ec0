"""One video of a prepared store written as a features file that `fsan ground FILE.h5` reads.

The file holds the video's N_v pooled clip features as a (N_v, D) dataset `features`, marked
with the dataset attribute `pooled_clips` (N_v; 0 where it holds rows), and the file attributes `video` (its id) and
`duration` (seconds), plus where it came from (`dataset`, `store`). `fsan ground` pools N_v rows
to N_v clips unchanged and normalises rows again (a no-op for normalised rows), so the file is
grounded as the store's video is scored; the mark tells it that the rows are clips of the whole
video (not rows a second: no duration check, and never cut into windows). A long video whose
rows the store keeps (rows.npy) is written as those rows, which `fsan ground` reads in windows
as `fsan evaluate` does. A store whose features a PCA projected is refused: `fsan ground` would
project them a second time.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fsan_cli.core.atomic import atomic_write, check_folder_of, make_folder_of
from fsan_cli.core.errors import FsanError, write_error
from fsan_cli.core.settings import load_settings
from fsan_cli.data.store import Store, load_store
from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.video import record as extractor
from fsan_cli.video.h5file import POOLED

SHOWN_IDS = 3  # ids named when the one asked for is not in the store


def open_for_export(dataset: str, data_dir: Path) -> Store:
    """The prepared store of `dataset` under `data_dir`; the synthetic one is generated on
    first use with the preset's N_v, as `fsan train` does."""
    if dataset == "synthetic":
        return load_store(ensure_synthetic(data_dir, clips=load_settings("synthetic").data.clips), mmap=True)
    return load_store(Path(data_dir) / dataset, mmap=True)


def export_video(store: Store, video: str, out: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write `video` of `store` to `out` (default: VIDEO.h5 in the current folder) atomically;
    an existing file only with `overwrite`. Returns what was written and the video's queries
    ({"split", "query", "times"}) in split order."""
    index = store.video_index
    found = next((v for v in (video, video[2:] if video.startswith("v_") else f"v_{video}") if v in index), None)
    if found is None:
        ids = [q.video for name in ("test", "val", "train") for q in store.splits.get(name, [])]
        ids = list(dict.fromkeys(ids or [v["video"] for v in store.videos]))[:SHOWN_IDS]
        raise FsanError(f"video '{video}' is not in the prepared store {store.path} ({len(index)} videos)",
                        f"Pass one of its ids, e.g. {', '.join(ids) or '(none)'}")
    if store.pca is not None or store.manifest.get("pca"):
        raise FsanError(f"the prepared store {store.path} holds features projected by PCA, which "
                        "`fsan ground` would project again",
                        f"Ground the official feature file instead: fsan ground FILE --video-id {found}")
    if out is None and os.sep in found:
        raise FsanError(f"the video id '{found}' is not a file name", "Pass --out FILE.h5")
    out = Path(out) if out is not None else Path(f"{found}.h5")
    _check_out(out, overwrite)
    row = store.videos[index[found]]
    duration = float(row["duration"])
    rows = store.kept_rows(index[found])  # a long video's: read in windows where a model finds it long
    kept = rows is not None
    features = rows if kept else np.asarray(store.features[index[found]], dtype=np.float32)
    buffer = io.BytesIO()
    record = extractor.check(store.manifest.get("extractor"), f"the store at {store.path}")
    attrs = extractor.to_attrs(record) if record is not None else {}
    _write_h5(buffer, features, {"video": found, "duration": duration,
                                 "dataset": str(store.manifest.get("dataset", store.path.name)),
                                 "store": str(store.path)},
              {**attrs, POOLED: 0 if kept else int(features.shape[0])})
    make_folder_of(out, "--out")
    try:
        atomic_write(out, lambda fh: fh.write(buffer.getvalue()), binary=True)
    except OSError as exc:  # nothing half-written is left: atomic_write removed its temporary file
        raise write_error(exc, out, "pass another --out FILE.h5") or exc from None
    queries = [{"split": name, "query": q.query, "times": q.times}
               for name, qs in store.splits.items() for q in qs if q.video == found]
    return {"path": str(out), "video": found, "dataset": store.manifest.get("dataset", store.path.name),
            "store": str(store.path), "duration": duration, "clips": int(store.features.shape[1]),
            "rows": int(features.shape[0]), "pooled": not kept, "feature_dim": int(features.shape[1]),
            "queries": queries}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise FsanError(f"{out} is a folder", "Pass a file name with --out FILE.h5")
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise FsanError(f"{out} is a link or not a regular file, which a new file would replace",
                        "Give --out the path of a plain file")
    if out.exists() and not overwrite:
        raise FsanError(f"{out} already exists", "Pass --overwrite to replace it, or choose another --out")
    check_folder_of(out, "--out")


def _write_h5(fh: io.BytesIO, features: np.ndarray, attrs: dict[str, Any], record: dict[str, Any]) -> None:
    """The file's attributes `attrs`; the dataset's, the extractor's record (`fsan ground`
    checks it against the checkpoint's, as for a file of `fsan extract`)."""
    with h5py.File(fh, "w") as h5:
        ds = h5.create_dataset("features", data=features)
        for key, value in record.items():
            ds.attrs[key] = value
        for key, value in attrs.items():
            h5.attrs[key] = value
