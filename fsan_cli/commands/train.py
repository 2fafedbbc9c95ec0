"""`fsan train`: not built yet (it answers with a clear error, never fake output)."""

from __future__ import annotations

from fsan_cli.errors import FsanError, handle_errors


@handle_errors
def train() -> None:
    """Not available yet in this version of fsan."""
    raise FsanError("`fsan train` is not available yet in this version", "See README.md for what is")
