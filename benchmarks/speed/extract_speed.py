"""How fast `fsan extract` turns video into features: frames per second, decoding included.

    python -m benchmarks.speed.extract_speed                  # the tiny test model on the CPU
    python -m benchmarks.speed.extract_speed --device cuda    # + ViT-B/32 at its real size
    python -m benchmarks.speed.extract_speed --b32            # ViT-B/32 on the CPU too (slow)

Makes a synthetic video with PyAV (--seconds long, 640x360 at 30 frames/s, mpeg4) and times
fsan_cli.video.encode.extract_video on it (decode, sample at --fps, preprocess, encode: the whole path
of one video) after a warm-up, with:

- tiny: the CLIP vision model of tests/test_extract.py (32 px, 2 layers, 16-d), random weights;
- ViT-B/32: CLIPVisionConfig's defaults, the architecture of openai/clip-vit-base-patch32
  (224 px, 12 layers of 768, 512-d), random weights: the same arithmetic as the real weights,
  with nothing to download. Run by default on CUDA, with --b32 on the CPU.

Each row also gives the encoder alone (frames/s of Encoder.encode on a batch already decoded),
so decoding's share shows. Rows are JSON lines after a `# record:` line (benchmarks/record.py).
Needs the video extra (pip install -e '.[video]').
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import header


def make_video(
    path: Path, seconds: float, width: int = 640, height: int = 360, rate: int = 30
) -> Path:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * rate)):
            img = np.roll(base, 4 * i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def encoder_folder(root: Path, size: str) -> Path:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if size == "tiny":
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)  # fmt: skip
    else:  # the defaults are ViT-B/32's vision tower
        config = CLIPVisionConfig(projection_dim=512)
    torch.manual_seed(0)
    folder = root / size
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


def measure(video: Path, folder: Path, size: str, device, fps: float, batch: int) -> dict:
    import torch

    from fsan_cli.video.encode import extract_video, load_encoder

    encoder = load_encoder(size, folder, device, fps)
    extract_video(video, encoder, batch)  # warm-up: kernels, caches
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    rows, seconds = extract_video(video, encoder, batch)
    sync()
    whole = time.perf_counter() - t0
    frames = np.random.default_rng(0).integers(0, 256, (batch, 360, 640, 3), dtype=np.uint8)
    encoder.encode(frames)
    sync()
    t0 = time.perf_counter()
    for _ in range(3):
        encoder.encode(frames)
    sync()
    alone = (time.perf_counter() - t0) / 3
    return {
        "model": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "video_s": round(seconds, 2),
        "frames": int(rows.shape[0]),
        "frames_per_s": round(rows.shape[0] / whole, 1),
        "video_s_per_s": round(seconds / whole, 1),
        "encoder_frames_per_s": round(batch / alone, 1),
        "batch": batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic video")
    parser.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--b32", action="store_true", help="ViT-B/32 on the CPU too")
    args = parser.parse_args()
    import torch

    print(header(__spec__.name), flush=True)
    device = torch.device(args.device)
    sizes = ["tiny"] + (["ViT-B/32"] if device.type == "cuda" or args.b32 else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        video = make_video(root / "video.mp4", args.seconds)
        for size in sizes:
            folder = encoder_folder(root, "tiny" if size == "tiny" else "b32")
            for dev in (
                [torch.device("cpu"), device]
                if device.type == "cuda" and size == "tiny"
                else [device]
            ):
                print(
                    json.dumps(measure(video, folder, size, dev, args.fps, args.batch)), flush=True
                )


if __name__ == "__main__":
    main()
