"""Ground sentences in one video: read its features, run a checkpoint, render the answer.

The library side of `fsan ground` (the command only parses options and calls these):

- `read_video`: one video's (T, D) features and duration from an HDF5 file, in our layout
  (dataset `features`, attribute `duration`) or the official ones (a group holding
  `c3d_features`; a single (T, D) dataset per video).
- `Grounder`: a checkpoint loaded once; `prepare(video)` pools, normalises and projects the
  features exactly as `fsan prepare` did for training; `ground(clips, duration, queries)` runs
  every query through the model in padded batches and returns `Grounding`s.
- `grounding_row` (the predictions JSONL line), `render` (table and terminal heatmap),
  `save_plot` (the same figure with matplotlib, imported only then).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsan_cli.errors import FsanError
from fsan_cli.output import log, warn
from fsan_cli.text import UNK, tokenize

RUNS = Path("runs")
MEMBERS = ("c3d_features", "features")  # a video's matrix inside its group (ActivityNet, ours)
DIDEMO_SECONDS = 30.0  # DiDeMo's six 5-second chunks: its features carry no duration
BATCH = 64  # queries per model call on a GPU
CPU_BATCH = 32  # on a CPU, per worker thread (measured best of 16, 32 and 64 with 2 workers)
FEW = 4  # up to this many queries run on one CPU thread (see `_cpu_workers`)
LAYOUT_HELP = (
    "Pass an HDF5 file with a (T, D) dataset `features` and an attribute `duration` (seconds), "
    "or an official feature file with --video-id"
)


# ----------------------------------------------------------------------------- inputs


def find_checkpoint(runs: Path = RUNS) -> Path:
    """The newest best.pt under `runs` (by modification time)."""
    found = (
        sorted(Path(runs).glob("**/best.pt"), key=lambda p: p.stat().st_mtime)
        if Path(runs).is_dir()
        else []
    )
    if not found:
        raise FsanError(
            f"no checkpoint found under {runs}/",
            "Train one with `fsan train`, or pass --checkpoint PATH",
        )
    return found[-1]


def read_queries(args: Sequence[str], stdin: Any = None) -> list[tuple[str, str]]:
    """(where, query) for each QUERY argument; "-" reads one query per line from stdin.

    Blank stdin lines are skipped; a blank argument is an error.
    """
    out: list[tuple[str, str]] = []
    for n, arg in enumerate(args, 1):
        if arg != "-":
            if not tokenize(arg):
                raise FsanError(
                    f"query {n} ({arg!r}) has no words",
                    'Pass a sentence, e.g. fsan ground video.h5 "a person opens the door"',
                )
            out.append((f"query {n}", arg.strip()))
            continue
        lines = (stdin or sys.stdin).read().splitlines()
        before = len(out)
        for i, line in enumerate(lines, 1):
            if line.strip():
                out.append((f"stdin line {i}", line.strip()))
        if len(out) == before:
            raise FsanError(
                "stdin holds no queries", "Pipe one query per line into `fsan ground VIDEO -`"
            )
    return out


@dataclass
class Video:
    video: str
    rows: np.ndarray  # (T, D) as stored
    duration: float | None  # seconds; None when the file has none
    where: str  # file and dataset path, for messages


def read_video(path: Path, video_id: str | None = None) -> Video:
    """One video's features from `path`; errors name the layout that was expected."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FsanError(
            f"video file {path} does not exist", "Pass the path of an HDF5 feature file"
        )
    if not h5py.is_hdf5(path):
        raise FsanError(f"{path} is not an HDF5 file", LAYOUT_HELP)
    try:
        with h5py.File(path, "r") as h5:
            ds, vid, single = _pick(h5, path, video_id)
            where = f"{path}:{ds.name}"
            if ds.shape[0] == 0:
                raise FsanError(
                    f"video '{vid}' in {where} has no feature rows (T = 0)",
                    "Extract features for at least one clip of the video",
                )
            rows = ds[()]
            duration = _duration(ds, h5 if single else None, where)
    except OSError as exc:
        raise FsanError(f"{path} cannot be read as HDF5 ({exc})", LAYOUT_HELP) from None
    return Video(vid, rows, duration, where)


def _pick(h5, path: Path, video_id: str | None):
    """(dataset, video id, whether the file holds only this video)."""
    import h5py

    if isinstance(h5.get("features"), h5py.Dataset):  # our layout: one video per file
        label = video_id or _text_attr(h5.attrs.get("video")) or path.stem
        return _matrix(h5["features"], path), label, True
    keys = list(h5.keys())
    if video_id is not None:
        for key in _aliases(video_id):
            if key in h5:
                return _matrix(h5[key], path), key, len(keys) == 1
        raise FsanError(
            f"video '{video_id}' is not in {path} ({len(keys)} videos there)",
            f"Pass --video-id with one of its keys, e.g. {', '.join(keys[:3]) or '(none)'}",
        )
    if not keys:
        raise FsanError(f"{path} holds no datasets", LAYOUT_HELP)
    if len(keys) > 1:
        raise FsanError(
            f"{path} holds {len(keys)} videos",
            f"Pass --video-id to pick one, e.g. --video-id {keys[0]}",
        )
    return _matrix(h5[keys[0]], path), keys[0], True


def _aliases(video: str) -> list[str]:
    """ActivityNet ids with or without `v_`; DiDeMo keys with or without the file extension."""
    names = [video, video[2:] if video.startswith("v_") else f"v_{video}"]
    if "." in video:
        names.append(video.rsplit(".", 1)[0])
    return names


def _matrix(obj, path: Path):
    """The (T, D) numeric dataset `obj` is, or holds."""
    import h5py

    if isinstance(obj, h5py.Group):
        inner = [obj[m] for m in MEMBERS if isinstance(obj.get(m), h5py.Dataset)]
        inner = inner or [v for v in obj.values() if isinstance(v, h5py.Dataset)]
        if len(inner) != 1:
            raise FsanError(
                f"'{obj.name}' in {path} is a group with members {list(obj.keys())[:5]}, "
                "not one (T, D) feature matrix",
                LAYOUT_HELP,
            )
        obj = inner[0]
    if len(obj.shape) != 2 or obj.dtype.kind not in "fiu":
        raise FsanError(
            f"'{obj.name}' in {path} holds {obj.dtype} values of shape {obj.shape}, "
            "not a (T, D) matrix of clip features",
            LAYOUT_HELP,
        )
    return obj


def _text_attr(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _duration(ds, root, where: str) -> float | None:
    """The `duration` attribute of the dataset, its group, or (one video per file) the file."""
    holders = [ds]
    if ds.parent.name != "/":
        holders.append(ds.parent)
    if root is not None:
        holders.append(root)
    for obj in holders:
        if "duration" in obj.attrs:
            raw = obj.attrs["duration"]
            try:
                return float(np.asarray(raw, dtype=np.float64).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                raise FsanError(
                    f"the duration attribute of {where} is {raw!r}, not a number of seconds",
                    "Fix the attribute, or pass --duration SECONDS",
                ) from None
    return None


def resolve_duration(video: Video, flag: float | None, dataset: str | None) -> float:
    """--duration, else the file's attribute, else DiDeMo's 30 s; positive and finite."""
    if flag is not None and video.duration is not None and abs(flag - video.duration) > 1e-3:
        warn(f"--duration {flag:g} replaces the file's duration {video.duration:g}")
    duration = flag if flag is not None else video.duration
    if duration is None and dataset == "didemo":
        log(f"Duration: {DIDEMO_SECONDS:g} s (DiDeMo's six 5-second chunks)")
        duration = DIDEMO_SECONDS
    if duration is None:
        raise FsanError(
            f"{video.where} has no duration attribute",
            "Pass --duration SECONDS (the video's length)",
        )
    if not (math.isfinite(duration) and duration > 0):
        raise FsanError(
            f"the duration of video '{video.video}' is {duration:g} s",
            "It must be positive; pass --duration SECONDS",
        )
    return float(duration)


# ----------------------------------------------------------------------------- the model


def load_model(path: Path, device):
    """(model, checkpoint dict) like engine.load_checkpoint, about a second faster for the paper
    config on a CPU: the weights are memory-mapped and assigned to a model built without its
    random initialisation. Anything unusual falls back to the engine's loader and its errors."""
    import torch

    from fsan_cli import engine
    from models.fsan import FSAN, FSANConfig

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != engine.CHECKPOINT_FORMAT:
            raise ValueError("not an fsan checkpoint")
        state = ckpt["state_dict"]
        with _no_init():
            words = torch.empty(state["embedding.weight"].shape)
            model = FSAN(FSANConfig.from_dict(ckpt["model_config"]), word_vectors=words)
        model.load_state_dict(state, assign=True)  # strict: every parameter comes from the file
    except Exception:  # noqa: BLE001 - the engine's loader says what is wrong with the file
        return engine.load_checkpoint(path, device)
    return model.to(device).eval(), ckpt


def _reuse_freed_memory() -> None:
    """Have glibc keep freed blocks of up to 256 MB for reuse. By default it hands large blocks
    back to the OS at once, so every batch's activations fault their pages in again: measured
    half of `fsan ground`'s page faults and system time for 500 paper-config queries. Only
    this process is affected, and only on glibc; elsewhere this does nothing."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: larger blocks still come from mmap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: free memory kept at the heap's top
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        pass


@contextmanager
def _no_init():
    """Skip torch.nn.init while building a model whose weights are loaded next. (The meta
    device would do it too, but its first use imports torch._dynamo: 1.5 s.)"""
    import torch.nn.init as init

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


@dataclass
class Grounding:
    query: str
    tokens: list[str]  # the words the model read (truncated to max_tokens)
    unknown: list[str]  # of those, the words read as <unk>
    segments: np.ndarray  # (k, 2) clip ids, inclusive
    moments: np.ndarray  # (k, 2) seconds
    scores: np.ndarray  # (k,)
    alignment_map: np.ndarray  # (len(tokens), N_v) cosine


class Grounder:
    """A checkpoint loaded once, ready to ground any number of queries in any video."""

    def __init__(self, checkpoint: Path, device, precision: str = "fp32") -> None:
        import torch

        if device.type == "cpu":
            _reuse_freed_memory()
        self.model, ckpt = load_model(checkpoint, device)
        self.device = device
        self.precision = resolve_precision(precision, device)
        if self.precision == "bf16":  # the alignment map and SC stay fp32 (FSAN.forward)
            self.model = self.model.to(torch.bfloat16)
        self.data: dict[str, Any] = ckpt["data"]
        self.vocab: list[str] = ckpt["vocab"]
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.nms = float(ckpt["settings"]["eval"]["nms"])
        self.clips = int(self.data["clips"])
        self.max_tokens = int(self.model.cfg.max_tokens)

    @property
    def dataset(self) -> str | None:
        return self.data.get("dataset")

    def prepare(self, video: Video):
        """(N_v, D) model input: PCA, pooling and L2 norm as at training time (features.video_clips)."""
        import torch

        pca = self.data.get("pca")
        expected = int(np.asarray(pca["mean"]).shape[0]) if pca else int(self.data["feature_dim"])
        if video.rows.shape[1] != expected:
            how = f", projected by its PCA to {self.data['feature_dim']}" if pca else ""
            raise FsanError(
                f"video '{video.video}' has {video.rows.shape[1]}-d features, the checkpoint "
                f"expects {expected}-d{how}",
                "Use features from the extractor the model was trained on, or another --checkpoint",
            )
        clips = torch.from_numpy(self._clips(video, pca)).to(self.device)
        return clips.bfloat16() if self.precision == "bf16" else clips

    def _clips(self, video: Video, pca) -> np.ndarray:
        from fsan_cli.data.features import video_clips

        normalize = bool(self.data.get("normalize", True))
        with np.errstate(invalid="ignore", over="ignore"):
            out = video_clips(video.rows, self.clips, pca=pca, normalize=normalize)
        if not np.isfinite(out).all():  # as prepare does: non-finite rows become zero rows
            finite = np.isfinite(video.rows).all(axis=1)
            warn(
                f"{int((~finite).sum())} feature rows of '{video.video}' hold NaN or inf; read as zeros"
            )
            rows = np.where(finite[:, None], video.rows, 0).astype(np.float32)
            out = video_clips(rows, self.clips, pca=pca, normalize=normalize)
        return out

    def encode(self, queries: Sequence[tuple[str, str]]) -> tuple[np.ndarray, list[list[str]]]:
        """Token ids (Q, Ns) zero-padded, and each query's words as read (truncated)."""
        full = [tokenize(q) for _, q in queries]
        words = [ws[: self.max_tokens] for ws in full]
        for (where, _), ws in zip(queries, full, strict=True):
            if len(ws) > self.max_tokens:
                warn(f"{where} has {len(ws)} words; the model reads the first {self.max_tokens}")
        unk = self.word_to_id[UNK]
        for (where, q), ws in zip(queries, words, strict=True):
            if not ws:
                raise FsanError(f"{where} ({q!r}) has no words", "Pass a sentence")
            if all(w not in self.word_to_id for w in ws):
                raise FsanError(
                    f"{where} ({q!r}) has no word the model knows (unknown: {', '.join(ws)})",
                    f"Rephrase it with common words; the checkpoint knows {len(self.vocab) - 2} words",
                )
        ids = np.zeros((len(words), max(len(w) for w in words)), np.int64)
        for i, ws in enumerate(words):
            ids[i, : len(ws)] = [self.word_to_id.get(w, unk) for w in ws]
        return ids, words

    def ground(
        self, clips, duration: float, queries: Sequence[tuple[str, str]], top_k: int
    ) -> list[Grounding]:
        """Top-k moments and alignment maps for every query, in padded batches of at most
        BATCH queries; on a CPU, batches of CPU_BATCH run side by side, one thread each
        (`_cpu_workers`)."""
        import torch

        from fsan_cli.engine import segments_to_seconds, top_k_segments

        ids, words = self.encode(queries)
        lengths = np.array([len(w) for w in words])
        # batches of similar length pad less: each is cut to its longest query
        order = np.argsort(lengths, kind="stable")

        def run(rows: np.ndarray):
            n = int(lengths[rows].max())
            with torch.inference_mode():  # grad mode is per thread
                tok = torch.from_numpy(ids[rows, :n]).to(self.device)
                video = clips[None].expand(tok.shape[0], -1, -1)  # (B, Nv, D), no copy
                res = self.model(video, tok)
                segs, scores = top_k_segments(res.segment_scores, top_k, self.nms)
                secs = segments_to_seconds(
                    segs.cpu(),
                    torch.full((tok.shape[0],), duration, dtype=torch.float64),
                    self.clips,
                )
                maps = res.alignment_map.float().cpu().numpy()
                return rows, segs.cpu().numpy(), secs, scores.float().cpu().numpy(), maps

        out: list[Grounding | None] = [None] * len(ids)
        with _cpu_workers(len(ids), self.device) as workers:
            size = min(CPU_BATCH if self.device.type == "cpu" else BATCH, -(-len(ids) // workers))
            batches = [order[i : i + size] for i in range(0, len(ids), size)]
            if workers > 1:
                pool = ThreadPoolExecutor(workers)
                done = pool.map(run, batches)
            else:
                pool, done = None, map(run, batches)
            try:
                for rows, segs, secs, scores, maps in done:
                    for j, q in enumerate(rows.tolist()):
                        ws = words[q]
                        out[q] = Grounding(
                            queries[q][1], ws, [w for w in ws if w not in self.word_to_id],
                            segs[j], secs[j], scores[j], maps[j, : len(ws)],
                        )  # fmt: skip
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
        return out


PRECISIONS = ("auto", "fp32", "bf16")


def fast_bf16(device) -> bool:
    """Whether `device` multiplies bf16 matrices natively: CUDA with bf16, or a CPU with AMX
    tiles (measured on one: 2 to 4 times the fp32 rate of the paper-config model)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx and amx())
    return False


def resolve_precision(precision: str, device) -> str:
    """"auto" -> "bf16" where the hardware has fast bf16, else "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


@contextmanager
def _cpu_workers(queries: int, device):
    """How many batches to run at once, with the CPU's intra-op threads set for them.

    On a CPU the model's ops are too small to keep several threads busy on one batch (they
    wait for each other at every op), so each batch gets one thread and as many batches run
    side by side as there were threads: measured 20-30% more queries/s than one batch on two
    threads, for 500 paper-config queries on a 2-core machine; fp32 results are bit-identical.
    A few queries (up to FEW) run on one thread alone (0.1 s for one paper-config query,
    against 0.6 to 1.5 s on two threads of a busy machine). The thread count, and with it
    OMP_NUM_THREADS, caps the workers; with OMP_NUM_THREADS set, a few queries keep it too."""
    import torch

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or (queries <= FEW and "OMP_NUM_THREADS" in os.environ):
        yield 1
        return
    torch.set_num_threads(1)  # intra-op threads of every thread, the workers' included
    try:
        yield 1 if queries <= FEW else min(threads, -(-queries // FEW))
    finally:
        torch.set_num_threads(threads)


def ground_video(
    grounder: Grounder,
    video: Video,
    duration: float,
    queries: Sequence[tuple[str, str]],
    top_k: int,
) -> list[Grounding]:
    """Prepare the video once, ground every query, and say on stderr what was read."""
    clips = grounder.prepare(video)
    t0 = time.perf_counter()
    results = grounder.ground(clips, duration, queries, top_k)
    rate = len(results) / max(time.perf_counter() - t0, 1e-9)
    log(
        f"Video '{video.video}': {video.rows.shape[0]} rows of {video.rows.shape[1]}-d, "
        f"{duration:g} s, {grounder.clips} clips; {len(results)} queries ({rate:.0f}/s, {grounder.precision})"
    )
    unknown = sorted({w for r in results for w in r.unknown})
    if unknown:
        warn(f"not in the model's vocabulary, read as {UNK}: {', '.join(unknown[:20])}")
    return results


def grounding_row(video: str, duration: float, g: Grounding, nms: float) -> dict[str, Any]:
    """One predictions JSONL line (DESIGN.md) plus the alignment map under its own key."""
    moments = [
        [round(float(s), 3), round(float(e), 3), round(float(c), 5)]
        for (s, e), c in zip(g.moments, g.scores, strict=True)
    ]
    return {
        "video": video,
        "query": g.query,
        "duration": duration,
        "moments": moments,
        "nms": nms,
        "alignment_map": {
            "tokens": g.tokens,
            "clips": int(g.alignment_map.shape[1]),
            "values": np.round(g.alignment_map.astype(np.float64), 4).tolist(),
        },
    }


# ----------------------------------------------------------------------------- for people


def clock(seconds: float) -> str:
    """m:ss (h:mm:ss from an hour on), rounded to whole seconds."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def moments_table(video: str, duration: float, g: Grounding):
    from rich.markup import escape

    from fsan_cli.output import make_table

    rows = [
        (str(r), f"{s:.2f}", f"{e:.2f}", clock(s), clock(e), f"{c:.4f}")
        for r, ((s, e), c) in enumerate(zip(g.moments, g.scores, strict=True), 1)
    ]
    return make_table(
        escape(f"{g.query!r} in {video} ({duration:.1f} s, {clock(duration)})"),
        ["rank", "start (s)", "end (s)", "start", "end", "score"],
        rows,
    )


PLAIN_RAMP = " .:-=+*#%@"  # low to high
# viridis at 9 evenly spaced points, low to high
VIRIDIS = [
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
]  # fmt: skip
LABEL_WIDTH = 14


def _shade(x: float) -> tuple[int, int, int]:
    pos = min(max(x, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(pos), len(VIRIDIS) - 2)
    f = pos - i
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    return tuple(round(a[c] + f * (b[c] - a[c])) for c in range(3))  # type: ignore[return-value]


def heatmap(g: Grounding, duration: float, colour: bool, width: int = 80):
    """The token-by-clip alignment map as rich Text (paper Figure 3), the top-1 moment marked
    under it, and a time axis. Without colour: ASCII shades from PLAIN_RAMP."""
    from rich.text import Text

    values = g.alignment_map
    nv = values.shape[1]
    names = [t + ("*" if t in g.unknown else "") for t in g.tokens]
    label = max(5, min(LABEL_WIDTH, max(len(n) for n in names)))  # 5: "top 1"
    cw = max(1, min(3, (width - label - 3) // nv))  # characters per clip
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
    shades = (
        f"dark {lo:.2f} to bright {hi:.2f}"
        if colour
        else f"shades '{PLAIN_RAMP}' from {lo:.2f} to {hi:.2f}"
    )
    out = Text(f"Alignment map, words x {nv} clips of {duration / nv:.2f} s; {shades}\n")
    for t, name in enumerate(names):
        out.append(_fit(name, label).rjust(label) + " |")
        for j in range(nv):
            x = float(scaled[t, j])
            if colour:
                out.append("█" * cw, style="rgb({},{},{})".format(*_shade(x)))
            else:
                out.append(PLAIN_RAMP[min(int(x * len(PLAIN_RAMP)), len(PLAIN_RAMP) - 1)] * cw)
        out.append("|\n")
    s, e = (int(v) for v in g.segments[0])
    out.append("top 1".rjust(label) + "  " + " " * (s * cw))
    out.append(_marker((e - s + 1) * cw), style="bold red" if colour else "")
    out.append("\n")
    axis, labels = _time_axis(nv, cw, duration)
    out.append(" " * (label + 2) + axis + "\n" + " " * (label + 2) + labels)
    if g.unknown:
        out.append(f"\n{'*'.rjust(label)}  not in the vocabulary, read as {UNK}")
    return out


def _fit(word: str, width: int) -> str:
    return word if len(word) <= width else word[: width - 1] + "~"


def _marker(n: int) -> str:
    return "^" if n == 1 else "[" + "=" * (n - 2) + "]"


def _time_axis(nv: int, cw: int, duration: float) -> tuple[str, str]:
    """A tick line and a label line over the nv * cw map columns (clip j starts at j * cw)."""
    width = nv * cw
    ticks = max(2, min(nv + 1, width // 12 + 1))
    bounds = sorted({round(i * nv / (ticks - 1)) for i in range(ticks)})
    line = ["-"] * (width + 1)
    labels = [" "] * (width + 8)
    end = 0
    for j in bounds:
        pos = j * cw
        line[pos] = "+"
        text = clock(j * duration / nv)
        start = pos - len(text) + 1 if j == nv else pos
        if start >= end:
            labels[start : start + len(text)] = text
            end = start + len(text) + 1
    return "".join(line), "".join(labels).rstrip()


def render(video: str, duration: float, results: Sequence[Grounding]) -> None:
    """Table and heatmap per query on stdout; colour only on a terminal without NO_COLOR."""
    from fsan_cli.output import stdout_console

    console = stdout_console()
    colour = console.color_system is not None and not console.no_color
    for n, g in enumerate(results):
        if n:
            console.print()
        console.print(moments_table(video, duration, g))
        console.print(heatmap(g, duration, colour, console.width), highlight=False)


# ----------------------------------------------------------------------------- --plot

MAX_PANELS = 12


def check_plot(path: Path) -> None:
    """Fail before any work when --plot cannot be honoured."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise FsanError(
            "--plot needs matplotlib, which is not installed",
            "Install the plot extra: pip install 'fsan[plot]' (or pip install matplotlib)",
        )
    if not Path(path).parent.is_dir():
        raise FsanError(
            f"folder {Path(path).parent} does not exist", "Create it first, or fix --plot"
        )


def save_plot(path: Path, video: str, duration: float, results: Sequence[Grounding]) -> None:
    """One panel per query (at most MAX_PANELS): the alignment map over time, the top-1 moment
    boxed in red, as in the paper's Figure 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if len(results) > MAX_PANELS:
        warn(f"--plot draws the first {MAX_PANELS} of {len(results)} queries")
    shown = results[:MAX_PANELS]
    heights = [1.2 + 0.28 * len(g.tokens) for g in shown]
    fig, axes = plt.subplots(
        len(shown),
        1,
        figsize=(10, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, g in zip(axes[:, 0], shown, strict=True):
        n = len(g.tokens)
        im = ax.imshow(
            g.alignment_map,
            aspect="auto",
            cmap="viridis",
            interpolation="nearest",
            extent=(0, duration, n - 0.5, -0.5),
        )
        s, e = (float(v) for v in g.moments[0])
        ax.add_patch(Rectangle((s, -0.5), e - s, n, fill=False, edgecolor="red", linewidth=2))
        ax.set_yticks(range(n), [t + ("*" if t in g.unknown else "") for t in g.tokens])
        ax.set_title(f"{g.query}  (top 1: {s:.1f}-{e:.1f} s, score {g.scores[0]:.3f})", fontsize=9)
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel(f"time in {video} (s)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=150)
    except ValueError as exc:  # an unknown file type
        raise FsanError(
            f"cannot save {path} ({exc})", "Use a .png, .pdf or .svg file name"
        ) from None
    finally:
        plt.close(fig)
    log(f"Wrote the figure to {path}")
