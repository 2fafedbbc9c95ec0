"""docs/cli.md is generated from the app by typer's own docs command; it must not go stale."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_cli_reference_is_up_to_date(tmp_path):
    out = tmp_path / "cli.md"
    subprocess.run(
        [sys.executable, "-m", "typer", "fsan_cli.app", "utils", "docs", "--name", "fsan", "--output", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == current, (
        "docs/cli.md is stale: run `python -m typer fsan_cli.app utils docs --name fsan --output docs/cli.md`"
    )


def test_every_command_is_documented():
    from fsan_cli.app import app

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in app.registered_commands:
        assert f"## `fsan {command.name}`" in text
