"""What several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSAN_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY_SIZES = {"train": 30, "val": 8, "test": 8}


def tiny_synthetic(root: Path) -> Path:
    """A tiny synthetic store under root/synthetic (videos per split: TINY_SIZES); its path."""
    from fsan_cli.data.synthetic import ensure_synthetic

    return ensure_synthetic(root, sizes=TINY_SIZES)
