"""Settings, from one source: `Settings` and its sections are dataclasses whose field names are
the TOML keys (`train.lr` is `Settings().train.lr`).

Resolution, each later layer over the earlier: the paper's values (`Settings.paper()`, the
dataclasses' defaults), the shipped defaults (presets/base.toml), the dataset's preset
(presets/<dataset>.toml), `--config FILE.toml`, then each `--set key=value`. Every value is
checked against its field's type, its `Literal` choices and its bounds, wherever it comes from.
The network's sections (model, align, loss) live in models/config.py; `Settings.model_config`
joins them into the network's `FSANConfig` field for field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log, warn
from models.config import (
    POSITIVE,
    AlignSettings,
    FSANConfig,
    LossSettings,
    ModelSettings,
    at_least,
    between,
)

DATASETS = ("synthetic", "activitynet", "didemo", "charades", "custom")
# Model sizes, each with the learning rate, batch and length that make it ground
# (presets/size-<name>.toml; measured in docs/method.md): small for a CPU, base for one consumer
# GPU, paper for the paper's §4.2 model.
SIZES = ("small", "base", "paper")
Size = Literal["small", "base", "paper"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass
class DataSettings:
    clips: int = field(default=64, metadata=at_least(1))  # N_v
    normalize: bool = True  # L2-normalise each clip feature row in prepare


@dataclass
class TrainSettings:
    # the model size whose recipe these settings started from (presets/size-<name>.toml); a record
    size: Size = "paper"
    # whole passes over the train split; 0: as many as it takes to make train.steps steps
    epochs: int = field(default=10, metadata=at_least(0))
    # with epochs = 0, the run's length in optimizer steps (rounded up to whole epochs, 2 to 100:
    # step.run_length): the schedules below are shares of it, so a size's recipe is the same
    # number of updates on 1,000 videos as on 10,000
    steps: int = field(default=0, metadata=at_least(0))
    batch_size: int = field(default=128, metadata=at_least(1))  # §4.2
    # most samples per forward/backward on each process: the gradient stays the batch's,
    # accumulated over the pieces, and activation memory scales with the piece. 0: the whole
    # share of the batch, or on a CPU the most that fits the free RAM (fsan_cli/core/memory.py)
    micro_batch: int = field(default=0, metadata=at_least(0))
    lr: float = field(default=1e-4, metadata=POSITIVE)  # §4.2 (Adam)
    weight_decay: float = field(default=0.0, metadata=at_least(0))  # > 0: AdamW
    warmup: float = field(default=0.0, metadata=between(0, 1))  # share of steps, linear lr warm-up
    grad_clip: float = field(default=0.0, metadata=at_least(0))  # 0: off
    sap_start: float = field(default=0.0, metadata=between(0, 1))  # share of steps before eq. 9-12
    sap_warmup: float = field(default=0.0, metadata=between(0, 1))  # share of steps they ramp in
    threads: int = field(default=0, metadata=at_least(0))  # CPU threads (0: PyTorch's default)
    # share of the training videos laid beside another training video (each pooled to half the
    # clips, in a drawn order): grounding inside a window of mixed videos (step.composed)
    compose: float = field(default=0.0, metadata=between(0, 1))
    # each sample's negative caption (and video): of this many drawn at random, the one whose
    # sentence is nearest the sample's (mean word vectors) from another video; 0 or 1: one drawn
    # at random, as the paper (loop.draw_negatives)
    hard_negatives: int = field(default=0, metadata=at_least(0))
    # torch.compile's mode under --compile ("reduce-overhead" adds CUDA graphs)
    compile_mode: CompileMode = "default"
    # capture the whole step (passes, backward, Adam) as one CUDA graph after 3 eager steps and
    # replay it: CUDA only, one process, not with --compile (2.5x the samples/s on an H200)
    cuda_graph: bool = True
    checkpoint_every: int = field(default=0, metadata=at_least(0))  # also a last.pt every N steps
    seed: int = 0
    # issue 22's speed options, off until measured on a GPU (fsan_cli/train/step_options.py):
    # forward and backward on a bf16 copy of the weights, Adam on the fp32 master weights
    # (which checkpoints save) instead of autocast's casts; on a CPU too (otherwise fp32 there)
    bf16_weights: bool = False
    # torch.compile the segment scores (eq. 8) and the losses (eq. 6-13) alone, not the network
    compile_losses: bool = False
    # under torchrun: DistributedDataParallel(static_graph=True), and with train.cuda_graph
    # the DDP step (its all-reduce included) captured too
    static_graph: bool = False


@dataclass
class EvalSettings:
    top_k: int = field(default=5, metadata=at_least(1))
    nms: float = field(default=0.5, metadata=between(0, 1))  # IoU threshold of the top-k's NMS
    # at the end of training, learn the span prior on train and choose its weight on val
    # (fsan_cli/predict/span_prior.py); answers then rank segments by SC + w log p where w > 0
    span_prior: bool = False


# keys of older fsan versions (run folders' config.toml, checkpoints, users' files)
RENAMED = {
    "align.outer": "align.outer_form",
    "loss.matching": "loss.w_matching",
    "loss.inner": "loss.w_inner",
    "loss.outer": "loss.w_outer",
}
# settings that decide how the work is split, not what is learnt: `--resume` may change them
FREE_ON_RESUME = {"train.micro_batch", "train.cuda_graph"}


@dataclass
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @classmethod
    def paper(cls) -> Settings:
        """The paper's values (§4.2; the equations as printed, with DESIGN.md's corrections)."""
        return cls()

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "settings") -> Settings:
        """Settings from nested {section: {key: value}} over the paper's values, checked."""
        flat = flatten(asdict(cls.paper()))
        _overlay(flat, values, origin)
        return _build(flat)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    def to_toml(self) -> str:
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
            lines.append("")
        return "\n".join(lines)

    def replace(self, dotted: str, value: Any) -> Settings:
        """A copy with one setting changed (checked like --set)."""
        flat = flatten(self.to_dict())
        _set(flat, dotted, value, "the program")
        return _build(flat)

    def learning(self) -> dict[str, Any]:
        """The settings without FREE_ON_RESUME: what two runs must share to be the same run."""
        return {k: v for k, v in flatten(self.to_dict()).items() if k not in FREE_ON_RESUME}

    def model_config(self, word_dim: int, feature_dim: int) -> FSANConfig:
        """The network's config: the model, align and loss sections, N_v and the data's dims."""
        return FSANConfig(**asdict(self.model), **asdict(self.align), **asdict(self.loss),
                          clips=self.data.clips, word_dim=word_dim, feature_dim=feature_dim)


def flatten(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in nested.items() for k, v in values.items()}


def _build(flat: dict[str, Any]) -> Settings:
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in flat.items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, {})[key] = value
    cls_of = typing.get_type_hints(Settings)
    settings = Settings(**{s: cls_of[s](**vals) for s, vals in sections.items()})
    if settings.train.epochs == 0 and settings.train.steps == 0:
        raise FsanError("train.epochs is 0 (as long as train.steps) but train.steps is 0 too",
                        "Set train.epochs to a number of epochs, or train.steps to a number of steps")
    if settings.model.hidden % settings.model.heads:
        raise FsanError(
            f"model.hidden={settings.model.hidden} is not divisible by model.heads={settings.model.heads}",
            "Choose values so hidden / heads is a whole number",
        )
    return settings


def _fields() -> dict[str, tuple[Any, dict]]:
    """{"section.key": (type, metadata)} of every setting."""
    out = {}
    for section, cls in typing.get_type_hints(Settings).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = (hints[f.name], dict(f.metadata))
    return out


def _overlay(flat: dict[str, Any], values: Any, origin: str) -> None:
    if not isinstance(values, dict):
        raise FsanError(f"{origin} does not hold settings sections", "See `fsan train --help`")
    sections = sorted({k.split(".")[0] for k in flat})
    for section, inner in values.items():
        if section not in sections or not isinstance(inner, dict):
            raise FsanError(f"unknown settings section '{section}' in {origin}",
                            f"Sections are: {', '.join(sections)}")
        for key, value in inner.items():
            _set(flat, f"{section}.{key}", value, origin)


def _set(flat: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    if dotted in RENAMED:
        warn(f"setting {dotted} in {origin} is now called {RENAMED[dotted]}")
        dotted = RENAMED[dotted]
    specs = _fields()
    if dotted not in specs:
        close = difflib.get_close_matches(dotted, list(specs), n=3, cutoff=0.5)
        hint = f"Did you mean {' or '.join(close)}?" if close else "See `fsan train --help`"
        raise FsanError(f"unknown setting '{dotted}' in {origin}", hint)
    kind, bounds = specs[dotted]
    flat[dotted] = _checked(dotted, _coerce(dotted, kind, value), bounds)


def _coerce(dotted: str, kind: Any, value: Any) -> Any:
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise FsanError(f"setting {dotted} is {value!r}, not one of its choices",
                            f"Use one of: {', '.join(map(str, choices))}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise FsanError(f"setting {dotted} takes true or false, got {value!r}", "Fix the value")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise FsanError(f"setting {dotted} takes a string, got {value!r}", "Fix the value")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FsanError(f"setting {dotted} takes a number, got {value!r}", "Fix the value")
    if not math.isfinite(value):
        raise FsanError(f"setting {dotted} is {value}, not a finite number", "Fix the value")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise FsanError(f"setting {dotted} takes a whole number, got {value}", "Fix the value")
        return int(value)
    return float(value)


def _checked(dotted: str, value: Any, bounds: dict) -> Any:
    lo, hi = bounds.get("lo"), bounds.get("hi")
    low_bad = lo is not None and (value <= lo if bounds.get("lo_open") else value < lo)
    high_bad = hi is not None and (value >= hi if bounds.get("hi_open") else value > hi)
    if not (low_bad or high_bad):
        return value
    if hi is not None:
        need = f"in {'(' if bounds.get('lo_open') else '['}{lo:g}, {hi:g}{')' if bounds.get('hi_open') else ']'}"
    elif bounds.get("lo_open"):
        need = "positive" if lo == 0 else f"greater than {lo:g}"
    else:
        need = f"at least {lo:g}"
    raise FsanError(f"{dotted} must be {need}, got {value}", f"Pass a value {need}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def parse_value(text: str) -> Any:
    """`--set` values are TOML values; a bare word that is not TOML is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def preset(name: str) -> dict[str, Any]:
    text = resources.files("fsan_cli.presets").joinpath(f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def read_toml(path: Path) -> dict[str, Any]:
    """A settings file; errors say what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise FsanError(f"config file {path} is a folder", "Pass a .toml file")
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise FsanError(f"config file {path} does not exist", "Check the path") from None
    except UnicodeDecodeError:
        raise FsanError(f"config file {path} is not UTF-8 text", "Save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise FsanError(f"config file {path} is not valid TOML ({exc})", "Fix it") from None


def default_size(dataset: str, device: str | None = None) -> Size:
    """The size a run gets without --size: small on a CPU (`device` "cpu", or "auto" without
    CUDA) and for the embedded synthetic benchmark, else paper."""
    if dataset == "synthetic":
        return "small"
    if device is None:
        return "paper"
    if device == "cpu":
        return "small"
    if device == "auto":
        import torch  # only where a setting needs the device: settings load at CLI start

        return "paper" if torch.cuda.is_available() else "small"
    return "paper"


def load_settings(dataset: str, config_file: Path | None = None,
                  overrides: list[str] | None = None, size: str | None = None,
                  device: str | None = None) -> Settings:
    """Resolved settings for `dataset`: paper < base preset < size preset < dataset preset <
    file < --set. The size is `size`, else train.size of --set or the file, else
    `default_size(dataset, device)`; with a `device` (a command's --device), a small default on
    a CPU is said on stderr (the paper's model would take hours per epoch there)."""
    if dataset not in DATASETS:
        raise FsanError(f"unknown dataset '{dataset}'", f"Use one of: {', '.join(DATASETS)}")
    file_values = read_toml(config_file) if config_file is not None else None
    sets = []
    for item in overrides or []:
        if "=" not in item:
            raise FsanError(f"--set '{item}' is not key=value", "Write e.g. --set model.hidden=256")
        key, value = item.split("=", 1)
        sets.append((key.strip(), parse_value(value.strip())))
    asked = _size_asked(size, file_values, config_file, sets)
    size = asked or default_size(dataset, device)
    flat = flatten(asdict(Settings.paper()))
    _overlay(flat, preset("base"), "preset base.toml")
    _overlay(flat, preset(f"size-{size}"), f"preset size-{size}.toml")
    _overlay(flat, preset(dataset), f"preset {dataset}.toml")
    if file_values is not None:
        _overlay(flat, file_values, str(config_file))
    for key, value in sets:
        _set(flat, key, value, "--set")
    settings = _build(flat)
    if asked is None and device is not None and size == "small" and dataset != "synthetic":
        log('No --size given: training the small model on the CPU (minutes; docs/method.md, "Sizes"). '
            "Pass --size paper for the paper's model")
    return settings


def _size_asked(size: str | None, file_values: Any, config_file: Path | None,
                sets: list[tuple[str, Any]]) -> str | None:
    """The size whose preset to start from: --size, else train.size of --set or of the config
    file (a run folder's config.toml names its own), checked; two that differ are an error."""
    asked = [(f"--size {size}", size)] if size is not None else []
    if isinstance(file_values, dict) and isinstance(file_values.get("train"), dict) and "size" in file_values["train"]:
        asked.append((f"train.size in {config_file}", file_values["train"]["size"]))
    asked += [(f"--set train.size={v}", v) for k, v in sets if k == "train.size"]
    for where, value in asked:
        if value not in SIZES:
            raise FsanError(f"unknown size {value!r} ({where})", f"Use one of: {', '.join(SIZES)}")
    if len({v for _, v in asked}) > 1:
        raise FsanError(f"{' and '.join(w for w, _ in asked)} ask for different sizes", "Ask for one size")
    return asked[-1][1] if asked else None
