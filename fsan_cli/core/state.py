"""Global options shared by every subcommand (set by the app callback)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class State:
    device: str = "auto"
    verbose: int = 0
    quiet: bool = False


STATE = State()
