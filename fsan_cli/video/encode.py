"""Decoding and feature extraction (the optional extra: `pip install -e '.[video]'`).

A video is decoded with PyAV (its wheels ship FFmpeg: no system dependency) and sampled at a
fixed rate: row k of the features is the frame shown at (k + 0.5) / fps seconds (the middle of
its 1 / fps span), T = ceil(duration x fps) rows. Each sampled frame goes through a CLIP image
encoder, `transformers`' CLIPVisionModelWithProjection (open_clip would need torchvision, which
does not import beside the CPU torch wheel), whose projected `image_embeds` are the row: the
joint image-text space, 512-d for ViT-B/32. The preprocessing is CLIP's (shorter side resized to
the model's image size, bicubic with antialiasing, centre crop, scaled to [0, 1], normalised by
the model's mean and std), done here in torch on the chosen device, batched, so no PIL and no
image processor is needed.

Memory stays bounded whatever the length: frames are decoded one at a time and encoded in chunks
of at most `batch` frames and CHUNK_BYTES of pixels; only the (T, D) features grow (2 frames/s of
a 3-hour video at 512-d: 44 MB).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F

from fsan_cli.core.errors import FsanError
from fsan_cli.core.state import STATE
from fsan_cli.video.record import KIND

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
# Two frames a second: finer than any model's clip (ActivityNet's 64 clips of a 2-minute video
# last 1.9 s, Charades-STA's 32 clips of a 30 s one 0.9 s), so every clip averages at least one
# or two frames, while a 2-minute video costs 240 frames (ViT-B/32: ~4.4 GFLOP each).
DEFAULT_FPS = 2.0
DEFAULT_BATCH = 64  # frames per forward pass
CHUNK_BYTES = 256 << 20  # decoded pixels held at once, at most
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's own normalisation (RGB)
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
EXTRA = "pip install -e '.[video]' (PyAV and transformers)"


def require_extra(what: str) -> None:
    """PyAV and transformers are importable, else one FsanError naming the extra."""
    absent = [m for m in ("av", "transformers") if importlib.util.find_spec(m) is None]
    if absent:
        raise FsanError(
            f"{what} needs {' and '.join(absent)}, which are not installed",
            f"Install the video extra: {EXTRA}",
        )


# ----------------------------------------------------------------------------- the encoder


@dataclass
class Encoder:
    model: torch.nn.Module
    record: dict[str, Any]  # fsan_cli/video/record.py
    device: torch.device

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB frames -> (N, D) float32 image embeddings."""
        pixels = torch.from_numpy(frames).to(self.device)
        r = self.record
        with torch.inference_mode():
            x = preprocess(pixels, r["image_size"], r["mean"], r["std"])  # (N, 3, S, S)
            out = self.model(pixel_values=x).image_embeds  # (N, D)
        return out.float().cpu().numpy()


def preprocess(
    frames: torch.Tensor, size: int, mean: list[float], std: list[float]
) -> torch.Tensor:
    """CLIP's preprocessing of (N, H, W, 3) uint8 frames: (N, 3, size, size) float32."""
    x = frames.permute(0, 3, 1, 2).float()  # (N, 3, H, W), 0..255
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    if new != (h, w):
        x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    x = x[:, :, top : top + size, left : left + size].clamp(0, 255) / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def weights_checksum(model: torch.nn.Module) -> str:
    """sha256 of the weights as loaded: each tensor's name, shape and float32 little-endian
    bytes in name order. The same weights give the same sum from safetensors or .bin files,
    from the Hugging Face cache or a local folder."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
        digest.update(f"{name}:{tuple(values.shape)}\n".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def load_encoder(model: str, weights: Path | None, device: torch.device, fps: float) -> Encoder:
    """The CLIP vision model `model` (a Hugging Face id, from its cache or downloaded) or the
    folder `weights` (saved with save_pretrained), on `device`; its extractor record."""
    require_extra("Extracting features from videos")
    from transformers import (
        CLIPVisionModelWithProjection,  # the optional [video] extra; seconds to load
    )
    from transformers.utils import logging as hf_logging  # the optional [video] extra

    if STATE.verbose == 0:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if weights is not None and not Path(weights).is_dir():
        raise FsanError(
            f"--weights {weights} is not a folder",
            "Pass the folder of a CLIP vision model saved with save_pretrained "
            "(config.json and model.safetensors)",
        )
    source = str(Path(weights).resolve()) if weights is not None else model
    how = (
        "Pass --weights with a folder saved by save_pretrained"
        if weights is not None
        else f"Download them once with `huggingface-cli download {model}` (or `hf download {model}`), "
        "or pass --weights DIR with a local copy"
    )
    try:
        try:  # the cache first: no network round trip when the weights are there
            net = CLIPVisionModelWithProjection.from_pretrained(source, local_files_only=True)
        except OSError:
            if weights is not None:
                raise
            if not hub_reachable():  # offline: say so now, not after a minute of retries
                raise OSError("the Hugging Face Hub cannot be reached from this machine") from None
            net = CLIPVisionModelWithProjection.from_pretrained(source)  # downloads them
    except OSError as exc:
        what = (
            f"--weights {weights} holds no CLIP vision model"
            if weights is not None
            else f"the CLIP weights {model} are not in the Hugging Face cache and cannot be downloaded"
        )
        raise FsanError(f"{what} ({_first_line(exc)})", how) from None
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise FsanError(
            f"{source} does not hold CLIP vision weights ({type(exc).__name__}: "
            f"{_first_line(exc)})",
            how,
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged weights file (SafetensorError), a .bin that holds code (UnpicklingError)
        raise FsanError(
            f"the weights in {source} cannot be loaded ({_first_line(exc).split('. ')[0][:120]}, "
            f"{type(exc).__name__}); "
            "fsan reads safetensors and weights-only .bin files and runs no code from them",
            how,
        ) from None
    net = net.to(torch.float32).eval()
    mean, std = _normalisation(source)
    record = {
        "kind": KIND,
        "library": "transformers",
        "model": source,
        "sha256": weights_checksum(net),
        "image_size": int(net.config.image_size),
        "mean": mean,
        "std": std,
        "dim": int(net.config.projection_dim),
        "fps": float(fps),
    }
    return Encoder(net.to(device), record, device)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a download from the Hugging Face Hub can be tried: not offline (HF_HUB_OFFLINE),
    and its host answers within `timeout` seconds (through a proxy, if one is set: then it is
    tried)."""
    from huggingface_hub import constants  # comes with transformers ([video] extra)

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def _normalisation(source: str) -> tuple[list[float], list[float]]:
    """The model's mean and std from its preprocessor_config.json where there is one (folder or
    cache), else CLIP's own."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download  # comes with transformers ([video] extra)

            try:  # the cache first: no network round trip (nor retries offline) when it is there
                path = Path(hf_hub_download(source, "preprocessor_config.json", local_files_only=True))
            except Exception:  # noqa: BLE001 - not cached: downloaded where the Hub answers
                if Path(source).is_dir() or not hub_reachable():
                    return list(OPENAI_MEAN), list(OPENAI_STD)
                path = Path(hf_hub_download(source, "preprocessor_config.json"))
        except Exception:  # noqa: BLE001 - offline, a folder without one: CLIP's values
            return list(OPENAI_MEAN), list(OPENAI_STD)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        return [float(v) for v in config["image_mean"]], [float(v) for v in config["image_std"]]
    except (OSError, ValueError, KeyError, TypeError):
        return list(OPENAI_MEAN), list(OPENAI_STD)


# ----------------------------------------------------------------------------- decoding


class Frames:
    """The frames of one video sampled at `fps`, as chunks of (n, H, W, 3) uint8; `duration`
    (seconds, from the decoded frames) once the chunks are exhausted; `expected` rows (from the
    container's duration) for progress."""

    def __init__(self, path: Path, fps: float, batch: int) -> None:
        import av  # the optional [video] extra (PyAV)

        self.path, self.fps, self.batch = Path(path), float(fps), int(batch)
        self.duration: float | None = None
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise _unreadable(path, exc) from None
        if not self.container.streams.video:
            self.container.close()
            raise FsanError(f"{path} holds no video stream", "Pass a video file with pictures")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        seconds = self.container.duration / 1e6 if self.container.duration else 0.0
        if self.stream.duration and self.stream.time_base:  # the pictures' own length, if known
            seconds = float(self.stream.duration * self.stream.time_base)
        # what the container says the video lasts (None: it does not say)
        self.container_duration = seconds if seconds > 0 and math.isfinite(seconds) else None
        self.expected = max(1, math.ceil(seconds * self.fps - 1e-6))

    def chunks(self) -> Iterator[np.ndarray]:
        import av  # the optional [video] extra (PyAV)

        try:
            yield from self._chunks()
        except av.FFmpegError as exc:
            raise _unreadable(self.path, exc) from None
        finally:
            self.container.close()

    def _chunks(self) -> Iterator[np.ndarray]:
        rate = float(self.stream.average_rate or 25)
        base = float(self.stream.time_base) if self.stream.time_base else 0.0
        pending: list[np.ndarray] = []
        prev, prev_pixels, start, end, k = None, None, None, 0.0, 0

        def pixels() -> np.ndarray:
            nonlocal prev_pixels
            if prev_pixels is None:
                prev_pixels = prev.to_ndarray(format="rgb24")  # (H, W, 3)
            return prev_pixels

        def take() -> Iterator[np.ndarray]:
            frame = pixels()
            if pending and pending[0].shape != frame.shape:  # the size changed mid-video
                yield np.stack(pending)
                pending.clear()
            pending.append(frame)
            if len(pending) >= max(1, min(self.batch, CHUNK_BYTES // frame.nbytes)):
                yield np.stack(pending)
                pending.clear()

        for i, frame in enumerate(self.container.decode(self.stream)):
            t = frame.time if frame.time is not None else i / rate
            start = t if start is None else start
            t -= start
            while prev is not None and (k + 0.5) / self.fps < t:  # rows whose time came before t
                yield from take()
                k += 1
            prev, prev_pixels = frame, None
            step = frame.duration * base if frame.duration and base else 1.0 / rate
            end = max(end, t + step)
        if prev is None:
            raise FsanError(f"{self.path} holds no video frames", "Pass a video file with pictures")
        self.duration = end
        rows = max(1, math.ceil(end * self.fps - 1e-6))
        while k < rows:  # the rows after the last frame's time show it
            yield from take()
            k += 1
        if pending:
            yield np.stack(pending)


def _unreadable(path: Path, exc: BaseException) -> FsanError:
    if isinstance(exc, FileNotFoundError | IsADirectoryError):
        return FsanError(f"video {path} does not exist", "Pass the path of a video file")
    reason = getattr(exc, "strerror", None) or _first_line(exc)
    return FsanError(
        f"{path} cannot be decoded as a video ({reason})",
        "Check that the file plays (ffprobe FILE); a truncated copy needs copying again",
    )


def extract_video(
    path: Path,
    encoder: Encoder,
    batch: int = DEFAULT_BATCH,
    advance: Callable[[int, int], None] | None = None,
    details: dict[str, Any] | None = None,
) -> tuple[np.ndarray, float]:
    """(T, D) float32 features of the video at `path` and its duration in seconds (of the frames
    decoded); `advance(done, expected)` after each chunk. `details` (if given) gets
    "container_duration": the seconds the container says (None where it does not), which a
    truncated file has more of than decode."""
    frames = Frames(path, encoder.record["fps"], batch)
    if details is not None:
        details["container_duration"] = frames.container_duration
    parts, done = [], 0
    for chunk in frames.chunks():
        parts.append(encoder.encode(chunk))
        done += len(chunk)
        if advance is not None:
            advance(done, max(done, frames.expected))
    assert frames.duration is not None  # set once the chunks are exhausted
    return np.concatenate(parts).astype(np.float32), float(frames.duration)
