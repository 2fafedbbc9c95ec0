"""User-facing errors: `Error: what happened. How to fix it.` on stderr, exit code 1; an
interrupted command (Ctrl-C, SIGTERM): `Error: <what was kept and how to go on>`, exit code 130."""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from fsan_cli.core.state import STATE

F = TypeVar("F", bound=Callable[..., Any])


class FsanError(Exception):
    """An error the user can fix. `message` says what happened, `fix` how to fix it."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message.rstrip()
        self.fix = fix.rstrip()

    def __str__(self) -> str:
        text = self.message if self.message.endswith((".", "?", "!")) else self.message + "."
        if self.fix:
            text += " " + (self.fix if self.fix.endswith((".", "?", "!")) else self.fix + ".")
        return text


INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports a tool stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a command. `message` says what was kept and how to go on; it
    starts with "interrupted". handle_errors prints it as the one `Error:` line and exits with
    INTERRUPT_EXIT; a plain KeyboardInterrupt gets GENERIC. A KeyboardInterrupt still, so that
    whatever cleans up after Ctrl-C (and `except Exception`, which lets it pass) treats it as one."""

    GENERIC = "interrupted. Nothing partial was kept; run the command again."

    def __init__(self, message: str = GENERIC) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# A write the machine refused, by errno: (what happened, what to do)
WRITE_PROBLEMS = {
    errno.ENOSPC: ("no space is left on the disk", "Free some space on it"),
    errno.EROFS: ("the file system is read-only", "Make it writable"),
    errno.EACCES: ("permission denied", "Fix the permissions"),
    errno.EPERM: ("operation not permitted", "Fix the permissions"),
}
if hasattr(errno, "EDQUOT"):
    WRITE_PROBLEMS[errno.EDQUOT] = ("the disk quota is used up", "Free some space within the quota")


def write_problem(exc: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) for an OSError of a full disk, a read-only file system or
    missing permissions; None for anything else."""
    if isinstance(exc, OSError) and exc.errno in WRITE_PROBLEMS:
        return WRITE_PROBLEMS[exc.errno]
    return None


def write_error(exc: BaseException, target: object = None, elsewhere: str = "use another path") -> FsanError | None:
    """The `Error:` for a write that write_problem explains (`target`: what was written, else the
    error's file name), with `elsewhere` as the other way out; None for any other exception."""
    problem = write_problem(exc)
    if problem is None:
        return None
    what, remedy = problem
    target = target or getattr(exc, "filename", None)
    return FsanError(f"cannot write {target}: {what}" if target else f"cannot write: {what}",
                     f"{remedy}, or {elsewhere}")


def verbose_level() -> int:
    return STATE.verbose


def handle_errors(func: F) -> F:
    """Turn FsanError (and unexpected exceptions) into one `Error:` line and exit code 1, and an
    interrupt (Interrupted, or a plain KeyboardInterrupt) into one `Error:` line and exit code 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except FsanError as exc:
            if verbose_level() > 0:
                traceback.print_exc(file=sys.stderr)
            print(f"Error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:  # the one place that reports an interrupt
            print(f"Error: {exc if isinstance(exc, Interrupted) else Interrupted()}", file=sys.stderr)
            raise typer.Exit(INTERRUPT_EXIT) from None
        except BrokenPipeError:
            raise typer.Exit(stdout_closed()) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if verbose_level() > 0:
                traceback.print_exc(file=sys.stderr)
            problem = write_problem(exc)
            if problem is not None:  # a full disk, a read-only path: the machine's, not a bug
                where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
                print(f"Error: {where}{problem[0]}. {problem[1]}, or use another path.", file=sys.stderr)
                raise typer.Exit(1) from None
            print(
                f"Error: unexpected {type(exc).__name__}: {exc}. "
                "Run again with -v for the traceback and report it as a bug.",
                file=sys.stderr,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away


def stdout_closed() -> int:
    """stdout's reader has gone (`fsan ... | head -1`): stop without a word, as Unix tools do.
    stdout is pointed at /dev/null so that Python's last flush raises nothing either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout)
        pass
    return SIGPIPE_EXIT
