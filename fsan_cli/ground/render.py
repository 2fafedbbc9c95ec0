"""How `fsan ground` shows its answer to people: a table of the top-k moments, the token-by-clip
alignment map as a terminal heatmap (paper Figure 3), and the same figure with matplotlib."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    """One line on what the scores are and the span prior behind the answer, or "" for a short
    video's plain SC."""
    if g.windowed:  # a long video's answers come from its windows
        text = ("Scores: the word coverage of each moment's window (a long video is read in windows, which "
                "take turns in this list), never rising down it. ")
        if g.prior_weight is None:
            return text.rstrip()
        text += f"Inside a window, segments rank by SC + {g.prior_weight:g} log p(s, e), the span prior. "
        if g.prior_changed and g.model_top is not None:
            _, (s, e), _ = g.model_top
            return text + f"It moved the top answer: the model alone answers {s:.2f}-{e:.2f} s."
        return text + "The top answer is the model's own."
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


def heatmap(g: Grounding, duration: float, colour: bool, width: int = 80,
            window: Sequence[float] | None = None, moments: Sequence[Sequence[float]] = ()):
    """The token-by-clip map the segment scores read (P, or P centred: paper Figure 3) as rich
    Text, the top-1 moment marked under it (and the model's own, when the span prior moved
    it), and a time axis. Without colour: ASCII shades from PLAIN_RAMP.

    A long video's map is its answering `window`'s ([start, end] seconds, predict/windows.py):
    the axis reads the video's times inside it, and a strip under it shows the whole video,
    the window and where each of the top-k `moments` lies."""

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
    start, end = (float(window[0]), float(window[1])) if window is not None else (0.0, duration)
    where = f" of the window {clock(start)}-{clock(end)} that answered" if window is not None else ""
    out = Text(f"{title}, words x {nv} clips of {(end - start) / nv:.2f} s{where}; {shades}\n")
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
        a, b = (float(v) for v in g.model_top[1])
        if window is not None:  # a long video's: it may come from another window, so placed by its seconds
            clip = (end - start) / nv
            ms, me = max(0, math.floor((a - start) / clip + 1e-6)), min(nv - 1, math.ceil((b - start) / clip - 1e-6) - 1)
        out.append("model".rjust(label) + "  ")
        if ms <= me:
            past = [w for w, far in (("starts before", a < start - 1e-6), ("ends after", b > end + 1e-6)) if far]
            out.append(" " * (ms * cw))
            out.append(_marker((me - ms + 1) * cw), style="yellow" if colour else "")
            out.append("  (without the span prior" + (f"; {clock(a)}-{clock(b)} {' and '.join(past)} this window"
                                                      if window is not None and past else "") + ")\n")
        else:
            out.append(f"{clock(a)}-{clock(b)} without the span prior, outside this window\n")
    axis, labels = _time_axis(nv, cw, end - start, start)
    out.append(" " * (label + 2) + axis + "\n" + " " * (label + 2) + labels)
    if window is not None:
        strip, ends = _whole_video(nv * cw, duration, (start, end), moments)
        out.append("\n" + "video".rjust(label) + " |" + strip + "|\n" + " " * (label + 2) + ends)
        out.append(f"\n{'':>{label}}  the whole video: === the window above, 1-{min(len(moments), 9)} the "
                   "top moments")
    if g.unknown:
        out.append(f"\n{'*'.rjust(label)}  not in the vocabulary, read as {UNK}")
    return out


def _fit(word: str, width: int) -> str:
    return word if len(word) <= width else word[: width - 1] + "~"


def _marker(n: int) -> str:
    return "^" if n == 1 else "[" + "=" * (n - 2) + "]"


def _whole_video(width: int, duration: float, window: tuple[float, float],
                 moments: Sequence[Sequence[float]]) -> tuple[str, str]:
    """A strip of `width` characters for the whole video: the window as ===, each of the first
    nine moments as its rank at its middle; and the line of its two ends' times."""
    at = lambda t: min(width - 1, max(0, int(t / duration * width))) if duration > 0 else 0  # noqa: E731
    line = ["-"] * width
    line[at(window[0]): at(window[1]) + 1] = "=" * (at(window[1]) + 1 - at(window[0]))
    for rank, (s, e) in reversed(list(enumerate(moments[:9], 1))):
        line[at((float(s) + float(e)) / 2)] = str(rank)
    ends = clock(0) + clock(duration).rjust(width + 2 - len(clock(0)))
    return "".join(line), ends


def _time_axis(nv: int, cw: int, duration: float, offset: float = 0.0) -> tuple[str, str]:
    """A tick line and a label line over the nv * cw map columns (clip j starts at j * cw),
    the times counted from `offset`."""
    width = nv * cw
    ticks = max(2, min(nv + 1, width // 12 + 1))
    bounds = sorted({round(i * nv / (ticks - 1)) for i in range(ticks)})
    line = ["-"] * (width + 1)
    labels = [" "] * (width + 8)
    end = 0
    for j in bounds:
        pos = j * cw
        line[pos] = "+"
        text = clock(offset + j * duration / nv)
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
        console.print(heatmap(r.grounding, r.duration, colour, console.width, r.row.get("window"),
                              [m[:2] for m in r.row.get("moments", [])]), highlight=False)


# ----------------------------------------------------------------------------- --plot

MAX_PANELS = 12
WIDTH = 9.6  # inches: 1440 pixels at save_figure's 150 dpi
FONT = 10  # points, every text of the figure
MIN_MAPS = 3.0  # inches of maps at least: room for the colorbar's label beside a short query
# what the colours of each align.sc_map mean, in words (the colorbar's label)
SCALE_LABELS = {
    "p": "cosine of word and clip",
    "p_hat": "(1 + cosine of word and clip) / 2",
    "centered": "cosine of word and clip,\nminus the word's mean over the clips",
}
# the boxes drawn on the maps: (legend label, colour, line style, line width)
BOXES: dict[str, tuple[str, str, Any, float]] = {
    "answer": ("the answer (top 1)", "#e8000b", "-", 2.6),
    "model": ("the model's own answer (the span prior moved it)", "#ff9f1c", "--", 2.2),
    "truth": ("ground truth (the query's times)", "white", (0, (1.5, 1.2)), 2.4),
}


def ground_truth(row: dict) -> list[tuple[float, float]]:
    """The (start, end) seconds a query line brought as "times" ([s, e] or [[s, e], ...]), for
    the figure; [] when it brought none or something else."""
    times = row.get("times")
    if isinstance(times, list) and len(times) == 2 and all(isinstance(t, int | float) for t in times):
        times = [times]
    if not isinstance(times, list):
        return []
    return [(float(t[0]), float(t[1])) for t in times
            if isinstance(t, list | tuple) and len(t) == 2 and all(isinstance(x, int | float) for x in t)]


def save_plot(path: Path, results: Sequence[Grounded]):
    """The figure of --plot, saved to `path` and returned: one panel per query (at most
    MAX_PANELS), the map the segment scores read (paper Figure 3) on one colour scale shared by
    all panels, with one colorbar; the answer boxed, the model's own answer when the span prior
    moved it, and the ground truth when the query line gave "times", named in one legend."""
    import matplotlib  # the optional [plot] extra, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend above
    from matplotlib.lines import Line2D  # the optional [plot] extra
    from matplotlib.patches import Patch, Rectangle  # the optional [plot] extra

    if len(results) > MAX_PANELS:
        warn(f"--plot draws the first {MAX_PANELS} of {len(results)} queries")
    shown = results[:MAX_PANELS]
    maps = [shown_map(r.grounding)[0] for r in shown]
    kinds = {r.grounding.sc_map if r.grounding.score_map is not None else "p" for r in shown}
    lo, hi = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    if kinds == {"centered"}:  # symmetric about 0: a word as strong over the whole video is one even shade
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    # a long video's panel has a row above its map: the whole video (_whole_strip)
    rows = [(kind, i) for i, r in enumerate(shown) for kind in (("strip",) if "window" in r.row else ()) + ("map",)]
    heights = [STRIP_INCHES if kind == "strip" else 0.9 + 0.26 * len(shown[i].grounding.tokens) for kind, i in rows]
    with plt.rc_context({"font.size": FONT}):
        fig, axes = plt.subplots(len(rows), 1, figsize=(WIDTH, 1.2 + max(MIN_MAPS, sum(heights))), squeeze=False,
                                 gridspec_kw={"height_ratios": heights}, layout="constrained")
        used: set[str] = set()
        panels = []
        for ax, (kind, i) in zip(axes[:, 0], rows, strict=True):
            if kind == "strip":
                _whole_strip(ax, shown[i], Rectangle)
                continue
            used |= _panel(ax, shown[i], maps[i], lo, hi, Rectangle, strip=rows.index(("strip", i)) if
                           ("strip", i) in rows else None, axes=axes[:, 0])
            panels.append(ax)
        bar = fig.colorbar(panels[0].images[0], ax=panels, fraction=0.03, pad=0.01, aspect=30)
        bar.set_label(SCALE_LABELS[kinds.pop()] if len(kinds) == 1 else "each query's scoring map")
        handles = [Line2D([], [], color=c, linestyle=ls, linewidth=w, label=label, path_effects=_outline(c))
                   for key, (label, c, ls, w) in BOXES.items() if key in used]
        if any("window" in r.row for r in shown):
            handles.append(Patch(color=BOXES["answer"][1], alpha=0.25,
                                 label="the window shown below (a long video is read in windows)"))
        fig.legend(handles=handles, loc="outside lower left", ncols=min(len(handles), 2), frameon=False,
                   handlelength=3)
        fig.suptitle("How well each word of the query matches each clip of the video (brighter: better)",
                     x=0.01, ha="left", fontsize=FONT + 1)
    save_figure(fig, path)
    return fig


def _panel(ax, r: Grounded, values: np.ndarray, lo: float, hi: float, Rectangle, strip: int | None = None,
           axes: Any = None) -> set[str]:
    """One query's map and boxes on `ax`; the keys of BOXES it drew. A long video's title goes
    on its whole-video strip, axes[strip], above the map."""
    g, n = r.grounding, len(r.grounding.tokens)
    start, end = r.row.get("window") or (0.0, r.duration)  # a long video: the answering window's map
    ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest",
              extent=(start, end, n - 0.5, -0.5), vmin=lo, vmax=hi)
    drawn = {"answer"}
    boxes = [("answer", float(g.moments[0][0]), float(g.moments[0][1]))]
    if g.prior_changed and g.model_top is not None:
        _, (a, b), _ = g.model_top
        boxes.append(("model", float(a), float(b)))
    boxes += [("truth", s, e) for s, e in ground_truth(r.row)]
    for key, s, e in reversed(boxes):  # the answer drawn last, on top
        _, colour, style, width = BOXES[key]
        ax.add_patch(Rectangle((s, -0.5), e - s, n, fill=False, edgecolor=colour, linestyle=style,
                               linewidth=width, path_effects=_outline(colour)))
        drawn.add(key)
    ax.set_yticks(range(n), [t + ("*" if t in g.unknown else "") for t in g.tokens])
    ax.set_xlim(start, end)
    s, e = boxes[0][1:]
    where = f"{r.video}, {start:.0f}-{end:.0f} s of {r.duration:.0f} s" if "window" in r.row else r.video
    title = f"\u201c{g.query}\u201d in {where}: answer {s:.1f}-{e:.1f} s"
    (axes[strip] if strip is not None else ax).set_title(title, loc="left", fontsize=FONT)
    ax.set_xlabel("time (s)" + ("   (* not in the vocabulary)" if g.unknown else ""))
    return drawn


STRIP_INCHES = 0.45  # the whole-video strip above a long video's map


def _whole_strip(strip, r: Grounded, Rectangle) -> None:
    """Above a long video's map, the whole video on `strip`: the window the map is of (shaded)
    and each top moment, numbered by rank (they come from any window)."""
    window = r.row["window"]
    strip.set_xlim(0, r.duration)
    strip.set_ylim(0, 1)
    strip.add_patch(Rectangle((window[0], 0), window[1] - window[0], 1, color=BOXES["answer"][1], alpha=0.25))
    for rank, m in enumerate(r.row.get("moments", [])[:9], 1):
        mid = (float(m[0]) + float(m[1])) / 2
        strip.plot([m[0], m[1]], [0.15, 0.15], color="0.15", linewidth=2)
        strip.text(mid, (0.95, 0.68, 0.41)[(rank - 1) % 3], str(rank), ha="center", va="top",
                   fontsize=FONT - 2)  # three heights: neighbouring ranks do not print on each other
    strip.set_yticks([])
    from matplotlib.ticker import MultipleLocator  # the optional [plot] extra

    step = next((x for x in (60, 120, 300, 600, 900, 1800, 3600, 7200) if r.duration / x <= 8), 3600 * 4)
    strip.xaxis.set_major_locator(MultipleLocator(step))  # whole minutes and hours
    strip.xaxis.set_major_formatter(lambda t, _: clock(t))  # h:mm:ss, unlike the map's seconds
    strip.tick_params(axis="x", labelsize=FONT - 2, pad=1)
    strip.set_ylabel("whole\nvideo", rotation=0, ha="right", va="center", fontsize=FONT - 2)


def _outline(colour: str) -> list:
    """A dark edge under white lines, which white paper and bright clips would hide."""
    from matplotlib import patheffects  # the optional [plot] extra

    return [patheffects.withStroke(linewidth=4, foreground="0.2")] if colour == "white" else []
