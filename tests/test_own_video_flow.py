"""The README's "Your own video" commands, read from the README and run in order in an empty
folder as a new user runs them: videos made with PyAV, a tiny CLIP vision model of the real
transformers class saved with save_pretrained as `clip-b32/`, and `mine.jsonl` lines of the form
the README shows (video, duration, query: no times, no split). Every step exits 0 and the last
prints an answer."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

av = pytest.importorskip("av", reason="PyAV is not installed (pip install -e '.[video]')")
pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[video]')"
)

from fsan_cli.app import app  # noqa: E402
from tests.test_extract import make_video  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
# (video, seconds, sentence) beside the README's own line: a handful of videos, as a user has
OTHERS = [("garden_02", 40.0, "a woman waters the plants"), ("street_03", 25.5, "a dog runs after a ball")]
RATE = 2  # frames per second of the videos made here, the extractor's default rate


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def readme_flow() -> tuple[list[list[str]], dict, list[str]]:
    """The commands of the section's bash block (without `fsan` and comments), its example
    annotation line, and its one-line `fsan prepare ... --videos` variant."""
    text = section("Your own video")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("  #", 1)[0]) for line in block.splitlines() if line.strip()]
    assert all(c[0] == "fsan" for c in commands), commands
    prose = " ".join(text.split("```", 2)[2].split())
    line = json.loads(re.search(r'`(\{"video": .*?\})`', prose).group(1))
    variant = shlex.split(re.search(r"`(fsan prepare [^`]*--videos [^`]*)`", prose).group(1))
    return [c[1:] for c in commands], line, variant[1:]


def make_folder(root: Path, line: dict, weights: str, videos: str) -> None:
    """What the user has before the first command: their videos, their sentences, the CLIP copy."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(root / weights)
    (root / videos).mkdir()
    mine = [line] + [{"video": v, "duration": d, "query": q} for v, d, q in OTHERS]
    for i, row in enumerate(mine):
        make_video(root / videos / f"{row['video']}.mp4", 64, 48, RATE, round(row["duration"] * RATE), seed=i)
    (root / "mine.jsonl").write_text("".join(json.dumps(row) + "\n" for row in mine), encoding="utf-8")


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_readme_own_video_commands_run_in_order_and_end_with_an_answer(tmp_path, monkeypatch):
    (extract, prepare, train, ground), line, variant = readme_flow()
    assert extract[0] == "extract" and prepare[0] == "prepare" and train[0] == "train" and ground[0] == "ground"
    weights, videos = option(extract, "--weights"), extract[1]
    features = Path(option(extract, "--out"))
    assert Path(option(prepare, "--features")) == features and option(ground, "--weights") == weights

    for folder in ("flow", "variant"):
        (tmp_path / folder).mkdir()
        make_folder(tmp_path / folder, line, weights, videos)
    env = {"COLUMNS": "200", "NO_COLOR": "1", "FSAN_DATA_DIR": None,
           "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def run(args: list[str]):
        r = CliRunner().invoke(app, args, env=env)
        assert r.exit_code == 0, f"fsan {shlex.join(args)}\n{r.output}"
        assert "Traceback" not in r.stderr
        return r

    monkeypatch.chdir(tmp_path / "flow")
    assert not features.parent.exists() or features.parent == Path(".")  # e.g. data/, made by extract
    for args in (extract, prepare, train):
        run(args)
    answer = run(ground)
    video, query = Path(ground[1]).stem, ground[2]
    assert video == line["video"] and query == line["query"]
    first, _, header, _, top, *_ = answer.stdout.splitlines()
    assert first.startswith(f"'{query}' in {video} ({line['duration']:g} s"), answer.stdout
    assert header.split("┃")[1:4] == [" rank ", " start (s) ", " end (s) "], answer.stdout
    assert re.fullmatch(r"│ 1 +│ +\d+\.\d\d │ +\d+\.\d\d │.*", top), answer.stdout

    # the one-line variant extracts the same features into the same file and prepares the same store
    monkeypatch.chdir(tmp_path / "variant")
    run(variant)
    flow, other = (np.load(tmp_path / where / "data" / "custom" / "features.npy") for where in ("flow", "variant"))
    np.testing.assert_array_equal(flow, other)
    with h5py.File(tmp_path / "variant" / features, "r") as h5:
        assert sorted(h5) == sorted([line["video"], *(v for v, _, _ in OTHERS)])
