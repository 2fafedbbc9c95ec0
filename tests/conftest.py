from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSAN_SHARED_DATA", ROOT.parent / "shared" / "data"))


TINY_SIZES = {"train": 30, "val": 8, "test": 8}


def tiny_synthetic(root: Path) -> Path:
    """A tiny synthetic store under root/synthetic (videos per split: TINY_SIZES); its path."""
    from fsan_cli.data.synthetic import ensure_synthetic

    return ensure_synthetic(root, sizes=TINY_SIZES)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real annotation files in ../shared/data (skipped with a reason where absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real annotation files not found at {SHARED_DATA} (set FSAN_SHARED_DATA)")
    return SHARED_DATA


def pytest_configure(config):
    # One thread: two threads on a loaded 2-core CI machine made tiny training runs 10-20x slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _reset_state():
    from fsan_cli.state import STATE

    STATE.device, STATE.verbose, STATE.quiet = "auto", 0, False
    yield
