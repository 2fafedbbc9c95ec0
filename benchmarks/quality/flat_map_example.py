"""Issue 20's example of a flat alignment map, with and without the span prior.

ActivityNet-Captions val_2, video v_o-aSCtwxsTw (41.1 s): "A kite is being flown in a desert."
is annotated over 0-40.07 s, and the video's other captions (val_1 and val_2) all mention the
kite, so its response is spread over the whole video and the centred map is nearly flat. This
script synthesises the video's features exactly as the semi-real benchmark does
(fsan_cli/data/semisynthetic.py: the same projection of the captions' words, seed 7), writes
them to WORK/kite.h5, and grounds its val_2 captions with a checkpoint trained on that
benchmark, with and without the span prior:

    python -m benchmarks.quality.flat_map_example --annotations ../shared/data/activitynet \
        --checkpoint /tmp/sem/activitynet/runs/small-seed0/best.pt --work /tmp/kite

It prints one line per caption and answer, and the `fsan ground` command of the full picture.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py

from fsan_cli.data.semisynthetic import synthesise

ROOT = Path(__file__).resolve().parents[2]
VIDEO = "v_o-aSCtwxsTw"


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", type=Path, required=True, help="ActivityNet-Captions' folder")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    args = ap.parse_args()
    info = {"captions": [], "spans": []}
    asked = []
    for name in ("val_1.json", "val_2.json"):
        d = json.loads((args.annotations / name).read_text())[VIDEO]
        info["duration"] = d["duration"]
        info["captions"] += d["sentences"]
        info["spans"] += [(max(0, s), min(d["duration"], e)) for s, e in d["timestamps"]]
        if name == "val_2.json":
            asked = list(zip(d["sentences"], d["timestamps"], strict=True))
    feats = synthesise({VIDEO: info}, 128, 1.0, 0.6, 7)[VIDEO]  # the benchmark's defaults
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "kite.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=feats)
        fh.attrs["duration"] = info["duration"]
        fh.attrs["video"] = VIDEO
    texts = [s.strip() for s, _ in asked]
    cmd = [sys.executable, "-m", "fsan_cli", "-q", "--device", "cpu", "ground", str(path), *texts,
           "--checkpoint", str(args.checkpoint), "--json", "--top-k", "1", "--precision", "fp32"]
    rows = [json.loads(x) for x in subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                  cwd=ROOT).stdout.splitlines()]
    for (text, (s, e)), row in zip(asked, rows, strict=True):
        a, b, score = row["moments"][0]
        line = f"{text.strip()!r}: annotated {s:.1f}-{e:.1f} s; answer {a:.1f}-{b:.1f} s (score {score:.3f})"
        prior = row.get("span_prior")
        if prior is not None:
            own = prior["moments"][0]
            line += (f"; the model alone {own[0]:.1f}-{own[1]:.1f} s (SC {own[2]:.3f})"
                     + (", moved by the span prior" if prior["changed"] else ""))
        print(line)
    print(f"\nThe picture: fsan ground {path} {texts[0]!r} --checkpoint {args.checkpoint}", file=sys.stderr)


if __name__ == "__main__":
    main()
