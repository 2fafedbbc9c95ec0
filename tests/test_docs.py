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


def test_readme_names_every_module_once():
    """README.md's "How it is built" lists each module of fsan_cli/ and models/ (package
    markers aside), and no module that is gone."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    built = text.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"^\| `((?:fsan_cli|models)/[\w/]+\.py)` \|", built, flags=re.MULTILINE)
    tree = {p.relative_to(ROOT).as_posix() for d in ("fsan_cli", "models") for p in (ROOT / d).rglob("*.py")}
    tree -= {p for p in tree if p.endswith("/__init__.py") and p != "fsan_cli/__init__.py"}
    assert sorted(set(named)) == sorted(named), "a module is listed twice"
    assert sorted(tree - set(named)) == [], "add a line for each of these to README.md's How it is built"
    assert sorted(set(named) - tree) == [], "these are listed in README.md but do not exist"


def test_user_docs_name_no_issue_numbers():
    import re

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\bissues? \d|#\d+\b", path.read_text(encoding="utf-8")), path.name
