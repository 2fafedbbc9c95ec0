"""How `fsan ground` shows its answer to people: a table of the top-k moments, the token-by-clip
alignment map as a terminal heatmap (paper Figure 3), and the same figure with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.markup import escape
from rich.text import Text

from fsan_cli.core.output import make_table, stdout_console, warn
from fsan_cli.core.text import UNK
from fsan_cli.evaluate.plots import save_figure
from fsan_cli.predict.answers import Grounding

if TYPE_CHECKING:
    from fsan_cli.ground.grounding import Grounded


def clock(seconds: float) -> str:
    """m:ss (h:mm:ss from an hour on), rounded to whole seconds."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def moments_table(video: str, duration: float, g: Grounding):
    rows = [
        (str(r), f"{s:.2f}", f"{e:.2f}", clock(s), clock(e), f"{c:.4f}")
        for r, ((s, e), c) in enumerate(zip(g.moments, g.scores, strict=True), 1)
    ]
    table = make_table(
        escape(f"{g.query!r} in {video} ({duration:.1f} s, {clock(duration)})"),
        ["rank", "start (s)", "end (s)", "start", "end", "score"],
        rows,
    )
    table.caption = escape(prior_note(g)) or None
    return table


def prior_note(g: Grounding) -> str:
    """One line on the span prior behind the answer, or "" when none was used."""
    if g.prior_weight is None:
        return ""
    text = f"Scores: SC + {g.prior_weight:g} log p(s, e), the span prior learned on train. "
    if g.prior_changed and g.model_top is not None:
        _, (s, e), sc = g.model_top
        return text + f"It moved the top answer: the model alone answers {s:.2f}-{e:.2f} s (SC {sc:.4f})."
    return text + "The top answer is the model's own."


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


# what each align.sc_map shows: the map the segment scores (eq. 8) read
MAP_TITLES = {
    "p": "Alignment map P",
    "p_hat": "(1 + P) / 2, the map the segment scores read",
    "centered": "P centred (each word's mean over the clips removed), the map the segment scores read",
}


def shown_map(g: Grounding) -> tuple[np.ndarray, str, float, float]:
    """(values, title, low, high) of the map to draw: the one the segment scores read. A
    centred map is drawn on a scale symmetric about 0, so a word that responds evenly over
    the whole video (a flat row, which no segment can win on) shows as one even shade."""
    values = g.alignment_map if g.score_map is None else g.score_map
    title = MAP_TITLES.get(g.sc_map if g.score_map is not None else "p", MAP_TITLES["p"])
    if g.score_map is not None and g.sc_map == "centered":
        m = float(np.abs(values).max())
        return values, title, -m, m
    return values, title, float(values.min()), float(values.max())


def heatmap(g: Grounding, duration: float, colour: bool, width: int = 80):
    """The token-by-clip map the segment scores read (P, or P centred: paper Figure 3) as rich
    Text, the top-1 moment marked under it (and the model's own, when the span prior moved
    it), and a time axis. Without colour: ASCII shades from PLAIN_RAMP."""

    values, title, lo, hi = shown_map(g)
    nv = values.shape[1]
    names = [t + ("*" if t in g.unknown else "") for t in g.tokens]
    label = max(5, min(LABEL_WIDTH, max(len(n) for n in names)))  # 5: "top 1"
    cw = max(1, min(3, (width - label - 3) // nv))  # characters per clip
    scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
    shades = (
        f"dark {lo:.2f} to bright {hi:.2f}"
        if colour
        else f"shades '{PLAIN_RAMP}' from {lo:.2f} to {hi:.2f}"
    )
    out = Text(f"{title}, words x {nv} clips of {duration / nv:.2f} s; {shades}\n")
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
    if g.prior_changed and g.model_top is not None:  # where the model alone would have answered
        ms, me = (int(v) for v in g.model_top[0])
        out.append("model".rjust(label) + "  " + " " * (ms * cw))
        out.append(_marker((me - ms + 1) * cw), style="yellow" if colour else "")
        out.append("  (without the span prior)\n")
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


def render(results: Sequence[Grounded]) -> None:
    """Table and heatmap per query on stdout; colour only on a terminal without NO_COLOR."""
    console = stdout_console()
    colour = console.color_system is not None and not console.no_color
    for n, r in enumerate(results):
        if n:
            console.print()
        console.print(moments_table(r.video, r.duration, r.grounding))
        console.print(heatmap(r.grounding, r.duration, colour, console.width), highlight=False)


# ----------------------------------------------------------------------------- --plot

MAX_PANELS = 12


def save_plot(path: Path, results: Sequence[Grounded]) -> None:
    """One row per query (at most MAX_PANELS): the alignment map P over time, and beside it the
    map the segment scores read when that is another (e.g. P centred), the top-1 moment boxed
    in red (and the model's own in dashed yellow when the span prior moved it), as in the
    paper's Figure 3."""
    import matplotlib  # the optional [plot] extra, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend above
    from matplotlib.patches import Rectangle  # the optional [plot] extra

    if len(results) > MAX_PANELS:
        warn(f"--plot draws the first {MAX_PANELS} of {len(results)} queries")
    shown = results[:MAX_PANELS]
    heights = [1.2 + 0.28 * len(r.grounding.tokens) for r in shown]
    two = any(r.grounding.score_map is not None and r.grounding.sc_map != "p" for r in shown)
    fig, axes = plt.subplots(
        len(shown),
        2 if two else 1,
        figsize=(18 if two else 10, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for row, r in zip(axes, shown, strict=True):
        g, duration = r.grounding, r.duration
        n = len(g.tokens)
        panels = [(g.alignment_map, "P", None, None)]
        if two and g.score_map is not None:
            values, title, lo, hi = shown_map(g)
            panels.append((values, title.split(",")[0], lo, hi))
        for ax, (values, name, lo, hi) in zip(row, panels, strict=False):
            im = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest",
                           extent=(0, duration, n - 0.5, -0.5), vmin=lo, vmax=hi)
            s, e = (float(v) for v in g.moments[0])
            ax.add_patch(Rectangle((s, -0.5), e - s, n, fill=False, edgecolor="red", linewidth=2))
            if g.prior_changed and g.model_top is not None:
                _, (a, b), _ = g.model_top
                ax.add_patch(Rectangle((a, -0.5), b - a, n, fill=False, edgecolor="yellow",
                                       linewidth=1.5, linestyle="--"))
            ax.set_yticks(range(n), [t + ("*" if t in g.unknown else "") for t in g.tokens])
            if ax is row[0]:
                moved = "; moved by the span prior, the model alone dashed" if g.prior_changed else ""
                ax.set_title(f"{name}: {g.query} in {r.video}  (top 1: {s:.1f}-{e:.1f} s, score "
                             f"{g.scores[0]:.3f}{moved})", fontsize=9, loc="left")
            else:
                ax.set_title(f"{name}: what the segment scores read", fontsize=9, loc="left")
            fig.colorbar(im, ax=ax, pad=0.01)
        for ax in row[len(panels):]:
            ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.tight_layout()
    save_figure(fig, path)
