"""The `fsan` console script (pyproject's [project.scripts]) and `python -m fsan_cli`: Ctrl-C while
fsan's modules load (the first ~0.1-0.3 s) is one `Error:` line and exit code 130, never a
traceback. Until fsan_cli.app's own handling takes over (app.main), SIGINT ends the process at
once with that line: nothing has been done yet. A shell that started fsan with SIGINT ignored
(a background job) keeps it ignored.

Not covered, as it is not fsan's: Ctrl-C while the interpreter itself starts, before any fsan
code runs (Python prints `Fatal Python error: init_import_site` when it lands in site's .pth
files)."""

import os
import signal
import sys

INTERRUPTED = "Error: interrupted while starting; nothing was done. Run the command again."  # app.INTERRUPTED
INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports a tool stopped by Ctrl-C


def _starting(signum, frame):  # noqa: ARG001 - a signal handler's signature
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(INTERRUPT_EXIT)


_EARLY = signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _EARLY:
    signal.signal(signal.SIGINT, _starting)

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
