"""User-facing errors: `Error: what happened. How to fix it.` on stderr, exit code 1; an
interrupted command (Ctrl-C, SIGTERM): `Error: <what was kept and how to go on>`, exit code 130."""

from __future__ import annotations

import errno
import functools
import os
import signal
import stat
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

try:  # typer (0.2x) runs on its own copy of click: its usage errors are that copy's
    from typer._click.exceptions import ClickException
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer._click.globals import get_current_context
except ImportError:  # an older typer, on click itself
    from click import get_current_context
    from click.exceptions import ClickException
    from click.exceptions import UsageError as ClickUsageError

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


class UsageError(FsanError):
    """Options that cannot go together, or an option's value that no run could take: bad usage,
    which handle_errors hands to click, so it prints as typer's own usage errors do (the usage
    line, the --help hint, `Error: what happened. How to fix it.`) with exit code 2."""


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


# A full disk does not always come as ENOSPC: numpy's tofile says "N requested and M written"
# (errno None) for a short write and "Not enough free space to write N bytes" where fallocate
# refused; torch.save's zip writer raises RuntimeError ("[enforce fail at inline_container.cc]
# ... unexpected pos", "file write failed"). A failed write on a (nearly) full file system is
# taken for what it is: free space below this many bytes (checked before anything written is
# removed, see out_of_space).
NEARLY_FULL = 1 << 20
NO_SPACE_MESSAGES = ("not enough free space", "no space left on device")


def write_problem(exc: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) for an OSError of a full disk, a read-only file system or
    missing permissions, or a write that says it ran out of space; None for anything else."""
    if isinstance(exc, OSError) and exc.errno in WRITE_PROBLEMS:
        return WRITE_PROBLEMS[exc.errno]
    if isinstance(exc, (OSError, RuntimeError)) and any(m in str(exc).lower() for m in NO_SPACE_MESSAGES):
        return WRITE_PROBLEMS[errno.ENOSPC]
    return None


# A path the user gave that the file system refuses, by errno: (what happened, what to do)
PATH_PROBLEMS = {
    errno.ENAMETOOLONG: ("the name is too long for the file system", "Use a shorter name"),
    errno.ELOOP: ("it is a link loop (following its links never reaches a file)", "Pass the file itself"),
}


def path_problem(exc: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) for an OSError of a path the file system refuses (a name
    over its limit, a link loop), wherever it was opened; None for anything else."""
    if isinstance(exc, OSError) and exc.errno in PATH_PROBLEMS:
        return PATH_PROBLEMS[exc.errno]
    return None


def out_of_space(exc: BaseException, where: str | os.PathLike[str], target: object = None) -> BaseException:
    """`exc` from a write into the folder `where`, as an OSError(ENOSPC) naming `target` (else
    `where`) when it is a failed write (an OSError without an errno, or a RuntimeError of
    torch's writer) and the file system holding `where` has (nearly) no space left; `exc`
    itself otherwise. Call it before removing what the failed write left, which frees space."""
    if write_problem(exc) is not None:
        return exc
    if not (isinstance(exc, OSError) and exc.errno is None) and not isinstance(exc, RuntimeError):
        return exc
    if free_space(where) >= NEARLY_FULL:
        return exc
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target if target is not None else where))


def free_space(where: str | os.PathLike[str]) -> float:
    """Bytes this process may still write on the file system of `where` (root may use the
    blocks reserved for it); infinite where that cannot be told."""
    try:
        st = os.statvfs(where)
    except (OSError, AttributeError):  # gone, or no statvfs (Windows)
        return float("inf")
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


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


SIGINTS: list[int] = []  # Ctrl-Cs this process got through note_interrupts' handler
_held: list[Any] = []  # the outermost import's frame, while a Ctrl-C waits for it to return


def outermost_import(frame: Any) -> Any:
    """The outermost import machinery's frame that `frame` runs inside (a module's top level, a
    C extension's init run from an import), or None outside any import."""
    outer = None
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            outer = frame
        frame = frame.f_back
    return outer


def note_interrupts() -> None:
    """From now on Ctrl-C raises KeyboardInterrupt as Python's own handler does, and is
    remembered: a library that swallows it fails next with some other error, which
    handle_errors then reports as the interrupt it was.

    A Ctrl-C that comes while a module loads (torch takes ~1 s) is raised when the outermost
    import returns, at the `import` statement in fsan's code: raised inside torch's import it
    can reach C++ code that cannot pass it on (`terminate called after throwing an instance of
    'pybind11::error_already_set'`, the process aborts), or a library's bare `except:` that
    swallows it, after which the command ran to its end as if no Ctrl-C had come. Until then
    a profile hook watches for that return (the import runs ~1.3x slower meanwhile)."""
    previous = sys.getprofile()

    def release(frame: Any, event: str, arg: object) -> None:  # noqa: ARG001 - sys.setprofile's signature
        if event == "return" and _held and frame is _held[0]:
            _held.clear()
            sys.setprofile(previous)
            SIGINTS.append(signal.SIGINT)
            raise KeyboardInterrupt  # from the import statement, the module fully loaded

    def interrupt(signum: int, frame: object) -> None:
        outer = outermost_import(frame)
        if outer is not None:
            if not _held:  # a second Ctrl-C meanwhile is the same interrupt
                _held.append(outer)
                sys.setprofile(release)
            return
        SIGINTS.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


def regular_file(path: Path, what: str, fix: str, missing: str | None = None, folder: str | None = None,
                 other: str | None = None) -> None:
    """An input `path` must be a regular file (links followed): a missing path, a folder, a
    broken link, a link loop, a FIFO or an unreachable one is one Error saying which, before any
    work. `fix` is the advice, `missing`, `folder` and `other` (a FIFO, socket or device) where
    those need their own."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FsanError(f"{what} {path} is a link loop (following its links never reaches a file)", fix) from None
        if path.is_symlink():
            raise FsanError(f"{what} {path} is a broken link (to {os.readlink(path)}, which does not exist)",
                            fix) from None
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # e.g. a folder on the way not readable
            raise FsanError(f"{what} {path} cannot be reached ({exc.strerror})",
                            "Check the path and its folders' permissions") from None
        raise FsanError(f"{what} {path} does not exist", missing or fix) from None
    if stat.S_ISDIR(mode):
        raise FsanError(f"{what} {path} is a folder", folder or fix)
    if not stat.S_ISREG(mode):
        raise FsanError(f"{what} {path} is not a regular file (a FIFO, socket or device)", other or fix)


def verbose_level() -> int:
    return STATE.verbose


def handle_errors(func: F) -> F:
    """Turn FsanError (and unexpected exceptions) into one `Error:` line and exit code 1, and an
    interrupt (Interrupted, or a plain KeyboardInterrupt) into one `Error:` line and exit code 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, ClickException):
            raise
        except UsageError as exc:  # printed by click as its own usage errors, exit code 2
            raise ClickUsageError(str(exc), get_current_context(silent=True)) from None
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
            if SIGINTS:  # after a Ctrl-C that a library swallowed: the interrupt, not a bug
                print(f"Error: {Interrupted()}", file=sys.stderr)
                raise typer.Exit(INTERRUPT_EXIT) from None
            problem = write_problem(exc) or path_problem(exc)
            if problem is not None:  # a full disk, a read-only path, a bad path: not a bug
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
