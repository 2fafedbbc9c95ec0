"""The app itself: every subcommand's help, the global options, exit codes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fsan_cli import __version__
from fsan_cli.app import app

runner = CliRunner()
COMMANDS = ["extract", "prepare", "train", "evaluate", "ground", "ablate"]


def test_top_level_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: fsan {name} [OPTIONS]")
    assert result.stderr == ""


def test_no_arguments_shows_help_with_usage_exit_code():
    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert "Usage: fsan [OPTIONS] COMMAND [ARGS]..." in result.stdout + result.stderr


def test_main_raises_only_the_young_generation_threshold(monkeypatch, capsys):
    import gc

    import fsan_cli.app as cli

    before = gc.get_threshold()
    monkeypatch.setattr("sys.argv", ["fsan", "--version"])
    try:
        with pytest.raises(SystemExit) as stop:
            cli.main()
        assert stop.value.code == 0 and capsys.readouterr().out == f"fsan {__version__}\n"
        assert gc.get_threshold() == (cli.GC_YOUNG, *before[1:])
    finally:
        gc.set_threshold(*before)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"fsan {__version__}\n")


@pytest.mark.parametrize("device", ["cuda:9", "tpu"])
def test_unavailable_device_is_one_error_line_naming_the_devices(device, tmp_path):
    result = runner.invoke(app, ["--device", device, "train", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "cpu" in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any data was generated


def test_unknown_setting_suggests_close_matches(tmp_path):
    result = runner.invoke(app, ["train", "--set", "model.hiden=64", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: unknown setting 'model.hiden' in --set. Did you mean model.hidden or model.heads "
        "or model.align_dim?"
    )


def test_a_narrow_terminal_never_cuts_a_number_in_a_table():
    """At 40 and 20 columns (stdout_console soft-wraps, as here) the headers give way, wrapped or
    shortened; the numbers and the labels' words never: every cell is printed whole, the table
    laid out wider than the terminal where it must be (a number was '0.…' at COLUMNS=40, and at
    80 columns the evaluate table cut '73.…')."""
    import io

    from rich.console import Console

    from fsan_cli.core.output import make_table
    from fsan_cli.evaluate.report import results_table

    rows = [("1", "0.88", "14.00", "0:01", "0:14", "-0.1652"), ("2", "113.34", "1414.00", "1:53", "23:34", "0.1711")]
    metrics = {"r@1,iou=0.1": 82.31, "r@1,iou=0.3": 45.91, "r@1,iou=0.5": 21.61, "r@5,iou=0.1": 91.38,
               "r@5,iou=0.3": 72.12, "r@5,iou=0.5": 55.21, "miou": 34.35}
    for width in (40, 20):
        out = io.StringIO()
        console = Console(file=out, width=width, color_system=None, soft_wrap=True)
        console.print(make_table("q in v", ["rank", "start (s)", "end (s)", "start", "end", "score"], rows))
        cells = [c.strip() for line in out.getvalue().splitlines() if line.startswith("│") for c in line.split("│")[1:-1]]
        assert cells == [c for r in rows for c in r]
        out = io.StringIO()
        console = Console(file=out, width=width, color_system=None, soft_wrap=True)
        console.print(results_table("activitynet", [("Prior on train (this run)", metrics)]))
        lines = [line for line in out.getvalue().splitlines() if line.startswith("│")]
        assert "…" not in out.getvalue()
        assert [c.strip() for c in lines[-3].split("│")[1:-1]][1:] == [f"{v:.2f}" for v in metrics.values()]
        assert " ".join(line.split("│")[1].strip() for line in lines[-3:]).split() == ["Prior", "on", "train", "(this", "run)"]
