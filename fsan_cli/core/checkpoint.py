"""Checkpoints: written atomically, read with `weights_only=True` (a file can hold tensors and
plain values only, so loading one runs no code), version-checked, and self-describing: the
network's config, the settings, the vocabulary with its vectors, the weights and how features
were prepared (N_v, feature dim, PCA, normalisation) rebuild the model without the dataset.

Keys: format, version, model_config, settings, vocab, word_vectors {source, dim, sha256} or
None (where the vocabulary's vectors came from, `word_vectors_of`; absent in older files),
tokenizer (the version, text.TOKENIZER, its vocabulary and queries were tokenized by,
`tokenizer_of_store`; absent in older files, which text.tokenizer_of reads as 1),
state_dict, data {dataset, clips, feature_dim, normalize, pca {mean, components} as tensors or
None, durations: the train videos' duration range (`durations_of`; absent in older files)}, extractor (the record of the feature extractor the store's features came from,
fsan_cli/video/record.py, plain values; None for official feature files and in older files), epoch,
and in last.pt `resume` (fsan_cli/train/resume.py).
"""

from __future__ import annotations

import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.init as init

from fsan_cli.core.atomic import atomic_write
from fsan_cli.core.errors import FsanError, regular_file
from fsan_cli.core.settings import RENAMED, Settings
from fsan_cli.core.text import source_spec, tokenizer_of, vectors_checksum
from models.config import FSANConfig
from models.fsan import FSAN

FORMAT = "fsan-checkpoint"
VERSION = 2  # 2: PCA and RNG states as tensors (weights_only), renamed settings (RENAMED)
MODEL_RENAMED = {"outer": "outer_form", "sap_losses": "sap"}  # model_config keys of version 1
TRAIN_HINT = "Pass a best.pt or last.pt from `fsan train`"


def save(payload: dict[str, Any], path: Path) -> None:
    """torch.save through a temporary file, fsync and rename: a crash never leaves a half file."""
    atomic_write(path, lambda fh: torch.save(payload, fh), binary=True)


def payload(model: FSAN, settings: Settings, store: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds; `extra` adds e.g. the epoch, the val record or resume state."""
    pca = None if store.pca is None else {k: torch.from_numpy(np.asarray(v)) for k, v in store.pca.items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.cfg.to_dict(),
        "settings": settings.to_dict(),
        "vocab": list(store.vocab),
        "word_vectors": word_vectors_of(store),
        "tokenizer": tokenizer_of_store(store),
        "extractor": store.manifest.get("extractor"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "data": {
            "dataset": store.manifest.get("dataset"),
            "clips": store.clips,
            "feature_dim": store.feature_dim,
            "normalize": store.manifest.get("normalize", True),
            "pca": pca,
            "durations": durations_of(store),
        },
        **extra,
    }


def durations_of(store: Any) -> dict[str, float] | None:
    """The range of video durations the model is trained on (the train split's videos, seconds:
    min, p50, p90, max) and their feature rows per second (median): how long a video the model
    reads at its own resolution (fsan_cli/predict/windows.py). None where the store records
    no durations."""
    index = store.video_index
    names = {q.video for q in store.splits.get("train", [])} or set(index)
    rows = [store.videos[index[v]] for v in names if v in index]
    seconds = np.array([float(r.get("duration", 0) or 0) for r in rows], np.float64)
    counts = np.array([float(r.get("rows", 0) or 0) for r in rows], np.float64)
    keep = np.isfinite(seconds) & (seconds > 0)
    if not keep.any():
        return None
    seconds, counts = seconds[keep], counts[keep]
    p50, p90 = np.percentile(seconds, [50, 90])
    rate = counts / seconds
    rate = rate[rate > 0]
    return {"min": float(seconds.min()), "p50": float(p50), "p90": float(p90), "max": float(seconds.max()),
            "videos": int(len(seconds)), "rows_per_second": float(np.median(rate)) if len(rate) else 0.0}


def word_vectors_of(store: Any) -> dict[str, Any] | None:
    """The store's record of its word vectors (text.vectors_record: source, dim, sha256), the
    sha256 computed from its vocabulary where an older store's manifest has none; None where
    it names no source."""
    record = store.manifest.get("word_vectors")
    if not isinstance(record, dict) or not record.get("source"):
        return None
    if record.get("sha256"):
        return dict(record)
    vectors = np.asarray(store.vectors)
    return {"source": source_spec(str(record["source"])), "dim": int(vectors.shape[1]),
            "sha256": vectors_checksum(list(store.vocab[2:]), vectors[2:])}


def tokenizer_of_store(store: Any) -> int:
    """The tokenizer version (text.TOKENIZER) the store's vocabulary was built with: 1 for a
    store of an older fsan, whose manifest records none."""
    return tokenizer_of(store.manifest, f"the data at {store.path}")


def load(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, checked and brought to the current version; nothing in the
    file can run (weights_only); tensors are memory-mapped where the file allows it."""
    path = Path(path)
    check_path(path)
    try:
        ckpt = _read(path)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise FsanError(f"checkpoint {path} cannot be read (UnpicklingError)",
                            "It is damaged or not an fsan checkpoint; train again or pass another file") from None
        raise FsanError(
            f"checkpoint {path} holds a {found.group(1)} object, and loading it would run code "
            "from the file, so fsan does not (an fsan checkpoint from before version 2 holds numpy "
            "arrays; a crafted file may hold anything)",
            "Train again with this fsan, or use a checkpoint from a source you trust that this "
            "fsan wrote",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure is a damaged file to the user
        raise FsanError(f"checkpoint {path} cannot be read ({type(exc).__name__})",
                        "It is damaged or not an fsan checkpoint; train again or pass another file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FsanError(f"{path} is not an fsan checkpoint", TRAIN_HINT)
    version = ckpt.get("version")
    if version not in (1, VERSION):
        raise FsanError(f"{path} is an fsan checkpoint of version {version!r}; this fsan reads "
                        f"versions 1 to {VERSION}", "Upgrade fsan (pip install -U fsan), or train again")
    if version == 1:
        _upgrade(ckpt)
    problem = _problem(ckpt)
    if problem is not None:
        raise FsanError(f"checkpoint {path} was not written by fsan train, or is damaged: {problem}",
                        f"{TRAIN_HINT}, or train again")
    return ckpt


def check_path(path: Path) -> None:
    """What --checkpoint names must be a regular file (links followed): a folder, a broken link,
    a link loop, a FIFO or a missing path is an Error saying which, before any work."""
    regular_file(path, "checkpoint", "Pass the .pt file itself, e.g. runs/x/best.pt",
                 missing="Check the path (e.g. runs/x/best.pt)", folder="Pass the .pt file inside it, e.g. best.pt",
                 other="Pass a .pt file from `fsan train`, e.g. runs/x/best.pt")


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _problem(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with the fields a checkpoint must hold (the module's "Keys"), or None; the
    values' meaning (settings, the model config, the weights' shapes) is checked where read."""
    for key, kind, name in (("model_config", dict, "an object"), ("settings", dict, "an object"),
                            ("state_dict", dict, "an object"), ("vocab", list, "a list"),
                            ("data", dict, "an object")):
        if key not in ckpt:
            return f'it has no "{key}"'
        if not isinstance(ckpt[key], kind):
            return f'its "{key}" is not {name}'
    if not all(isinstance(w, str) for w in ckpt["vocab"]):
        return 'its "vocab" is not a list of words'
    data = ckpt["data"]
    for key in ("clips", "feature_dim"):
        if not (_int(data.get(key)) and data[key] > 0):
            return f'its data.{key} is {data.get(key)!r}, not a whole number > 0'
    if not (data.get("dataset") is None or isinstance(data["dataset"], str)):
        return f"its data.dataset is {data['dataset']!r}, not a name"
    if not isinstance(data.get("normalize", True), bool):
        return f"its data.normalize is {data['normalize']!r}, not true or false"
    pca = data.get("pca")
    if pca is not None:
        mean = pca.get("mean") if isinstance(pca, dict) else None
        comp = pca.get("components") if isinstance(pca, dict) else None
        if not (torch.is_tensor(mean) and torch.is_tensor(comp) and mean.ndim == 1 and comp.ndim == 2
                and comp.shape == (data["feature_dim"], mean.shape[0])):
            return ("its data.pca is not {mean (D_in), components (feature_dim, D_in)} tensors "
                    f"for feature_dim {data['feature_dim']}")
    return None


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive (legacy format): read without mmap
        return torch.load(path, map_location="cpu", weights_only=True)


def _upgrade(ckpt: dict[str, Any]) -> None:
    """Version 1 -> 2 in place: renamed settings and model_config keys."""
    settings = ckpt.get("settings") or {}
    for old, new in RENAMED.items():
        (s, k), (_, k2) = old.split("."), new.split(".")
        if k in settings.get(s, {}):
            settings[s][k2] = settings[s].pop(k)
    mc = ckpt.get("model_config") or {}
    for old, new in MODEL_RENAMED.items():
        if old in mc:
            mc[new] = mc.pop(old)
    ckpt["version"] = VERSION


def settings_of(ckpt: dict[str, Any]) -> Settings:
    return Settings.from_dict(ckpt["settings"], "the checkpoint")


def pca_of(ckpt: dict[str, Any]) -> dict[str, np.ndarray] | None:
    pca = ckpt["data"].get("pca")
    return None if pca is None else {k: np.asarray(v) for k, v in pca.items()}


def build_model(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> FSAN:
    """The network with the checkpoint's weights, in eval mode. Built without its random
    initialisation, and the (memory-mapped) weights assigned: about a second faster for the
    paper config on a CPU than initialising first."""
    state = ckpt["state_dict"]
    try:
        with _no_init():
            words = torch.empty(state["embedding.weight"].shape)
            model = FSAN(FSANConfig.from_dict(ckpt["model_config"]), word_vectors=words)
        model.load_state_dict(state, assign=True)  # strict: every parameter comes from the file
    except (KeyError, RuntimeError, TypeError) as exc:
        raise FsanError(f"the checkpoint's weights do not fit its model config ({type(exc).__name__})",
                        "It is damaged; train again or pass another file") from None
    return model.to(device).eval()


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[FSAN, dict[str, Any]]:
    ckpt = load(path)
    return build_model(ckpt, device), ckpt


def check_compatible(ckpt: dict[str, Any], store: Any) -> None:
    data = ckpt["data"]
    if data["feature_dim"] != store.feature_dim or data["clips"] != store.clips:
        raise FsanError(
            f"the checkpoint expects {data['clips']} clips of {data['feature_dim']}-d features, "
            f"the data at {store.path} has {store.clips} clips of {store.feature_dim}-d",
            "Use a checkpoint trained on this dataset, or prepare the data with the same settings",
        )


@contextmanager
def _no_init():
    """Skip torch.nn.init while building a model whose weights are loaded next. (The meta
    device would do it too, but its first use imports torch._dynamo: 1.5 s.)"""

    names = ("kaiming_uniform_", "uniform_", "normal_", "xavier_uniform_", "trunc_normal_",
             "zeros_", "ones_", "constant_")  # fmt: skip
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)
