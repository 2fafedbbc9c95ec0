"""What `fsan ground` answers: the features VIDEO stands for (a video file extracted as the
checkpoint's features were, and cached), read with the queries asked, answered by the Predictor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fsan_cli.core.device import resolve_device
from fsan_cli.ground import grounding
from fsan_cli.ground.requests import Request
from fsan_cli.predict.predictor import Predictor
from fsan_cli.video.extract import features_for_ground, is_video_file


def answer(video: Path, asked: Sequence[Request], video_id: str | None, checkpoint: Path | None,
           newest: Callable[[], Path], weights: Path | None, device_spec: str, precision: str,
           span_prior: bool, top_k: int, duration: float | None, dataset: str | None,
           data_dir: Path) -> list[grounding.Grounded]:
    """Every query of `asked` grounded in VIDEO (a features file, or a video file) with
    `checkpoint`, else the one `newest()` finds (asked for only when needed, after the features
    file was read)."""
    if is_video_file(video):  # extracted as the checkpoint's features were, cached
        checkpoint = checkpoint or newest()
        video = features_for_ground(video, checkpoint, weights, resolve_device(device_spec))
    videos, keys = grounding.read_asked(video, asked, video_id)
    checkpoint = checkpoint or newest()
    predictor = Predictor.load(checkpoint, resolve_device(device_spec), precision, span_prior)
    return grounding.ground(predictor, videos, keys, asked, top_k, duration, dataset, data_dir)
