"""How fast `fsan ground` answers: one query in a fresh process, and a batch from stdin.

    python -m benchmarks.speed.ground_speed                 # paper config: d 512, 6 layers, N_v 64
    python -m benchmarks.speed.ground_speed --set model.hidden=128 --set model.layers=2 \
        --set model.heads=4 --set data.clips=32             # the synthetic preset's model
    python -m benchmarks.speed.ground_speed --queries 500 --repeats 3 --device cpu

Writes an untrained checkpoint of the chosen config (ActivityNet shapes: 500-d features, 300-d
word vectors, a 10,000-word vocabulary) and a 64-clip video file (T = 450 rows, 120 s), then
times whole commands in new processes (interpreter start, imports, checkpoint load included):

- one query, `fsan ground v.h5 QUERY --json` (target: under 2 s);
- `--queries` queries (default 500) piped to `fsan ground v.h5 - --json` (target: 100 queries/s
  or more, counting the whole command).

For context it also times `python -c "import torch"` on the same machine, the floor of any
command that runs the model. Targets are from issue 6; the machine's load is printed with them,
after a first `# record:` line saying how the figures were made (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import header

ROOT = Path(__file__).resolve().parents[2]

_WORDS = "a the person man woman boy girl takes puts opens closes phone desk door window cup"
WORDS = (_WORDS + " table walks runs sits stands up down into off on in of with and then").split()


def write_checkpoint(
    path: Path, sets: list[str], vocab_size: int, word_dim: int, feature_dim: int
) -> int:
    """An untrained checkpoint in `fsan train`'s format (fsan_cli/core/checkpoint.py); returns N_v."""
    import torch

    from fsan_cli.core import checkpoint
    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.store import Store
    from models.fsan import FSAN

    cfg = load_settings("activitynet", overrides=sets)
    vocab = ["<pad>", "<unk>", *WORDS, *(f"w{i}" for i in range(vocab_size - 2 - len(WORDS)))]
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 0.3, (len(vocab), word_dim)).astype(np.float32)
    vectors[:2] = 0
    clips = cfg.data.clips
    store = Store(
        path.parent,
        {"dataset": "activitynet", "normalize": True},
        np.zeros((1, clips, feature_dim), np.float32),
        [],
        vocab,
        vectors,
        {},
    )
    torch.manual_seed(0)
    model = FSAN(cfg.model_config(word_dim, feature_dim), torch.from_numpy(vectors)).eval()
    checkpoint.save(checkpoint.payload(model, cfg, store, {"epoch": 0}), path)
    return clips


def write_video(path: Path, rows: int, dim: int, duration: float) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(
            "features", data=np.random.default_rng(1).normal(size=(rows, dim)).astype(np.float32)
        )
        f.attrs["duration"] = duration


def queries(n: int) -> str:
    rng = np.random.default_rng(2)
    lines = [" ".join(rng.choice(WORDS, int(rng.integers(6, 16)))) for _ in range(n)]
    return "\n".join(lines) + "\n"


def timed(cmd: list[str], stdin: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}",
                                 description=__doc__.splitlines()[0])
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="setting override key=value"
    )
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(header(__spec__.name), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, video = Path(tmp) / "best.pt", Path(tmp) / "v.h5"
        clips = write_checkpoint(ckpt, args.sets, 10_000, 300, 500)
        write_video(video, 450, 500, 120.0)
        size = ckpt.stat().st_size / 1e6
        base = [
            sys.executable,
            "-m",
            "fsan_cli",
            "-q",
            "--device",
            args.device,
            "ground",
            str(video),
        ]
        floor = [timed([sys.executable, "-c", "import torch"]) for _ in range(args.repeats)]
        one = [
            timed([*base, "a person takes a phone off a desk", "--checkpoint", str(ckpt), "--json"])
            for _ in range(args.repeats)
        ]
        text = queries(args.queries)
        many = [
            timed([*base, "-", "--checkpoint", str(ckpt), "--json"], text)
            for _ in range(max(1, args.repeats))
        ]
        print(
            f"config: {' '.join(args.sets) or 'paper (d 512, 6 layers, 8 heads)'}, N_v {clips}, "
            f"checkpoint {size:.0f} MB, device {args.device}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"python -c 'import torch': median {statistics.median(floor):.2f} s, best {min(floor):.2f} s"
        )
        print(
            f"one query, whole command: median {statistics.median(one):.2f} s, best {min(one):.2f} s "
            f"(target < 2 s)"
        )
        best, median = min(many), statistics.median(many)
        print(
            f"{args.queries} queries from stdin, whole command: median {median:.2f} s = "
            f"{args.queries / median:.0f} queries/s, best {best:.2f} s = {args.queries / best:.0f} "
            f"queries/s (target >= 100); model part about "
            f"{args.queries / max(best - min(one), 1e-9):.0f} queries/s at best"
        )


if __name__ == "__main__":
    main()
