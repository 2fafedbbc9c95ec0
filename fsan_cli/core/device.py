"""Resolve `--device auto|cpu|cuda|cuda:N` once, and say what was chosen on stderr."""

from __future__ import annotations

import re

from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log

_resolved: dict[str, object] = {}


def available_devices() -> list[str]:
    import torch  # only once a device is resolved: `fsan --help` and bad options answer without it

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def resolve_device(spec: str, announce: bool = True):
    """Return a torch.device for `spec`, or raise FsanError naming the devices that exist."""
    import torch  # only once a device is resolved: `fsan --help` and bad options answer without it

    spec = spec.strip().lower()
    if spec in _resolved:
        return _resolved[spec]
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise FsanError(
            f"unknown device '{spec}'",
            f"Use one of auto, cpu, cuda, cuda:N; devices here: {', '.join(available_devices())}",
        )
    if spec == "auto":
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    elif spec == "cpu":
        device = torch.device("cpu")
    else:
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise FsanError(
                f"device '{spec}' is not available",
                f"Pass --device with one of: {', '.join(available_devices())}",
            )
        device = torch.device(f"cuda:{index}")
    _resolved[spec] = device
    if announce:
        if device.type == "cuda":
            log(f"Device: {device} ({torch.cuda.get_device_name(device)})")
        else:
            log("Device: cpu")
    return device
