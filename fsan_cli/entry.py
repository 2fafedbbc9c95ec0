"""The `fsan` console script (pyproject's [project.scripts]) and `python -m fsan_cli`: Ctrl-C while
fsan's modules load (the first ~0.1-0.3 s) is one `Error:` line and exit code 130, never a
traceback. Until fsan_cli.app's own handling takes over (app.main), SIGINT ends the process at
once with that line: nothing has been done yet. A shell that started fsan with SIGINT ignored
(a background job) keeps it ignored.

Not covered, as it is not fsan's: Ctrl-C while the interpreter itself starts or finds and reads
this module, before its first line runs (Python prints `Fatal Python error: init_import_site`
when it lands in site's .pth files, or a traceback ending at the console script's `from
fsan_cli.entry import main`; about 20-35 ms after the start here)."""

# First, before any import that runs Python code: `_signal` and `os` are loaded by the interpreter
# at its start (looking them up runs no Python code), while `import signal` builds its enums
# for ~1-20 ms, time in which a Ctrl-C used to escape as a traceback.
import _signal
import os

INTERRUPTED = "Error: interrupted while starting; nothing was done. Run the command again."  # app.INTERRUPTED
INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports a tool stopped by Ctrl-C


def _starting(signum, frame):  # noqa: ARG001 - a signal handler's signature
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(INTERRUPT_EXIT)


_EARLY = _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler
if _EARLY:
    _signal.signal(_signal.SIGINT, _starting)

import sys  # noqa: E402 - after the handler above, on purpose

try:  # noqa: E402 - after the handler above, on purpose
    from fsan_cli.app import main as app_main
    from fsan_cli.core.errors import note_interrupts
except KeyboardInterrupt:  # SIGINT was ignored at start, yet a KeyboardInterrupt came
    print(INTERRUPTED, file=sys.stderr)
    raise SystemExit(INTERRUPT_EXIT) from None


def main() -> None:
    try:
        if _EARLY:  # from here on app.main's own handling: Ctrl-C is a KeyboardInterrupt again
            note_interrupts()
        app_main()
    except KeyboardInterrupt:  # in the instant before app.main's try
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
