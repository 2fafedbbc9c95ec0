"""--plot: the check that it can be honoured (before any work), saving a figure, and the bar chart
of `fsan evaluate --by-length` (paper Figure 4). matplotlib is the optional extra `plot`."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsan_cli.core.atomic import atomic_write, check_folder_of, make_folder_of
from fsan_cli.core.errors import FsanError, write_error
from fsan_cli.core.output import log
from fsan_cli.evaluate.metrics import metric_keys
from fsan_cli.evaluate.report import column_header

FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def check_plot(path: Path, inputs: tuple[Path | None, ...] = (), overwrite: bool = False) -> None:
    """Fail before any work when --plot cannot be honoured: matplotlib, the folder, the format,
    never a file the command reads, a folder or a link, and an existing file only with
    `overwrite` (as --save-predictions)."""

    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise FsanError(f"--plot {path} has no image file type matplotlib writes",
                        f"End the name with one of: {', '.join('.' + f for f in FORMATS[:4])}, ...")
    if path.is_dir() or path.is_symlink() or (path.exists() and not path.is_file()):
        raise FsanError(f"--plot {path} is a folder, a link or not a regular file", "Give a file name")
    for source in inputs:
        if source is not None and path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise FsanError(f"--plot {path} is a file this command reads", "Choose another file for --plot")
    if path.exists() and not overwrite:
        raise FsanError(f"--plot {path} already exists", "Pass --overwrite to replace it, or choose another file")

    if importlib.util.find_spec("matplotlib") is None:
        raise FsanError(
            "--plot needs matplotlib, which is not installed",
            "Install the plot extra: pip install 'fsan[plot]' (or pip install matplotlib)",
        )
    check_folder_of(path, "--plot")


def pyplot():
    """matplotlib.pyplot without a display (the Agg backend)."""
    import matplotlib  # the optional [plot] extra, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend above

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Save and close `fig`, atomically (never a half-written image under its name); FsanError
    on a file type matplotlib cannot write, a full disk or a read-only folder."""
    kind = Path(path).suffix.lower().lstrip(".")
    make_folder_of(path, "--plot")
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format=kind, dpi=150), binary=True)
    except ValueError as exc:  # an unknown file type
        raise FsanError(
            f"cannot save {path} ({exc})", "Use a .png, .pdf or .svg file name"
        ) from None
    except OSError as exc:
        raise write_error(exc, path, "pass another --plot FILE") or exc from None
    finally:
        pyplot().close(fig)
    log(f"Wrote the figure to {path}")


def save_length_plot(path: Path, dataset: str, buckets: Sequence[Any], title: str) -> None:
    """Bars of R@1 at each IoU threshold (DiDeMo: Rank@1) per video-length bucket, and the mIoU
    as a red line, as in the paper's Figure 4. `buckets` are `breakdown.LengthBucket`s."""

    plt = pyplot()
    keys = [k for k in metric_keys(dataset) if k.startswith(("r@1,", "rank@1"))]
    n = len(buckets)
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(min(16.0, max(8.0, 0.22 * n * len(keys) + 3)), 4.5))
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [b.metrics[key] for b in buckets], width, label=column_header(key).replace("\n", " "))
    ax.plot(range(n), [b.metrics["miou"] for b in buckets], "o-", color="red", label="mIoU")
    ax.set_xticks(range(n), [f"{b.label}\n({b.queries})" for b in buckets],
                  rotation=90 if n > 8 else 0, fontsize=8)
    ax.set_xlabel("video length (queries)")
    ax.set_ylabel("percent")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 100)
    fig.suptitle(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, path)
