from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA


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
    from fsan_cli.core.state import STATE

    STATE.device, STATE.verbose, STATE.quiet = "auto", 0, False
    yield
