"""The `fsan` Typer app: global options, then one thin module per subcommand."""

from __future__ import annotations

import gc
import sys
from typing import Annotated

INTERRUPTED = "Error: interrupted while starting; nothing was done. Run the command again."
INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports a tool stopped by Ctrl-C

try:  # Ctrl-C while the modules load (the first ~0.1-0.3 s): one line, not a traceback
    import typer

    from fsan_cli import __version__
    from fsan_cli.commands import ablate, evaluate, export, extract, ground, prepare, train
    from fsan_cli.core.errors import stdout_closed
    from fsan_cli.core.state import STATE
except KeyboardInterrupt:
    print(INTERRUPTED, file=sys.stderr)
    raise SystemExit(INTERRUPT_EXIT) from None

app = typer.Typer(
    name="fsan",
    help="Weakly supervised temporal language grounding with FSAN "
    "(Fine-grained Semantic Alignment Network).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"fsan {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    device: Annotated[
        str,
        typer.Option(
            "--device",
            envvar="FSAN_DEVICE",
            metavar="DEVICE",
            help="Where to run: auto, cpu, cuda or cuda:N.",
        ),
    ] = "auto",
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More logging; -v shows tracebacks.")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results, warnings and errors (no progress or logs).")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    STATE.device = device
    STATE.verbose = verbose
    STATE.quiet = quiet


app.command("extract")(extract.extract)
app.command("prepare")(prepare.prepare)
app.command("export")(export.export)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("ground")(ground.ground)
app.command("ablate")(ablate.ablate)


# Collect the youngest generation after this many new container objects, not CPython's 700.
# A command builds a large long-lived heap (torch's modules, a model) and then many short-lived
# objects; at 700, `import torch` alone sets off about 30 middle and 2 full collections, and
# a full one takes 40-50 ms at that heap size. Measured on `fsan ground` with the paper config
# (`python -m benchmarks.speed.ground_speed`): 0.1-0.25 s less for one query, 0.3-0.8 s less for 500.
# The older generations keep their thresholds, so cycles are still collected in long runs.
GC_YOUNG = 50_000


def main() -> None:
    try:
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        app(prog_name="fsan")
    except SystemExit as exc:
        code = exc.code
        if code == INTERRUPT_EXIT and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            print(INTERRUPTED, file=sys.stderr)  # typer ends a Ctrl-C while parsing with exit 130, silently
    except KeyboardInterrupt:  # before a command's own handler (handle_errors) took over
        print(INTERRUPTED, file=sys.stderr)
        code = INTERRUPT_EXIT
    try:  # results still buffered may meet a closed pipe only here
        sys.stdout.flush()
    except BrokenPipeError:
        code = stdout_closed()
    sys.exit(code)
