"""Settings: the TOML preset of a dataset, then `--config FILE.toml`, then `--set key=value`."""

from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from fsan_cli.errors import FsanError

DATASETS = ("synthetic", "activitynet", "didemo", "charades", "custom")

Config = dict[str, dict[str, Any]]


def _preset(name: str) -> Config:
    text = resources.files("fsan_cli.presets").joinpath(f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def _merge(base: Config, override: dict[str, Any], origin: str) -> None:
    for section, values in override.items():
        if section not in base or not isinstance(values, dict):
            raise FsanError(
                f"unknown settings section '{section}' in {origin}",
                f"Sections are: {', '.join(base)}",
            )
        for key, value in values.items():
            _set(base, f"{section}.{key}", value, origin)


def _set(cfg: Config, dotted: str, value: Any, origin: str) -> None:
    keys = [f"{s}.{k}" for s, vals in cfg.items() for k in vals]
    if dotted not in keys:
        close = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.5)
        hint = f"Did you mean {' or '.join(close)}?" if close else "See `fsan train --help`"
        raise FsanError(f"unknown setting '{dotted}' in {origin}", hint)
    section, key = dotted.split(".", 1)
    old = cfg[section][key]
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise FsanError(f"setting {dotted} takes true or false, got {value!r}", "Fix the value")
    elif isinstance(old, int | float) and not isinstance(value, bool):
        if not isinstance(value, int | float):
            raise FsanError(f"setting {dotted} takes a number, got {value!r}", "Fix the value")
        value = float(value) if isinstance(old, float) else value
        if isinstance(old, int) and isinstance(value, float):
            if not value.is_integer():
                raise FsanError(f"setting {dotted} takes a whole number, got {value}", "Fix the value")
            value = int(value)
    elif isinstance(old, str) and not isinstance(value, str):
        raise FsanError(f"setting {dotted} takes a string, got {value!r}", "Fix the value")
    cfg[section][key] = value


def parse_value(text: str) -> Any:
    """`--set` values are TOML values; a bare word that is not TOML is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(
    dataset: str, config_file: Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Resolved settings for `dataset`: base preset < dataset preset < file < --set."""
    if dataset not in DATASETS:
        raise FsanError(f"unknown dataset '{dataset}'", f"Use one of: {', '.join(DATASETS)}")
    cfg = _preset("base")
    _merge(cfg, _preset(dataset), f"preset {dataset}.toml")
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text("utf-8"))
        except FileNotFoundError:
            raise FsanError(f"config file {config_file} does not exist", "Check the path") from None
        except tomllib.TOMLDecodeError as exc:
            raise FsanError(f"config file {config_file} is not valid TOML ({exc})", "Fix it") from None
        _merge(cfg, data, str(config_file))
    for item in overrides or []:
        if "=" not in item:
            raise FsanError(f"--set '{item}' is not key=value", "Write e.g. --set model.hidden=256")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), parse_value(value.strip()), "--set")
    return cfg


def to_toml(cfg: Config) -> str:
    """Write the resolved settings back as TOML (flat sections of scalars only)."""
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
