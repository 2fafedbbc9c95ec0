from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, tiny_synthetic


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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding the tiny synthetic store (data_dir / "synthetic"), one per test module:
    tests may train into it or add stores beside it. A module's own `data_dir` replaces it."""
    root = tmp_path_factory.mktemp("data")
    tiny_synthetic(root)
    return root


@pytest.fixture(scope="module")
def store(data_dir):
    """The tiny synthetic store of `data_dir`, loaded."""
    from fsan_cli.data.store import load_store

    return load_store(data_dir / "synthetic")


@pytest.fixture(autouse=True)
def _reset_state():
    from fsan_cli.core.state import STATE

    STATE.device, STATE.verbose, STATE.quiet = "auto", 0, False
    yield
