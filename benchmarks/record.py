"""How a result was made, for every results file a benchmark writes: the command, the commit (and
whether tracked files differed from it), the date, the machine and the torch version.

    from benchmarks.record import header, record
    row = {**result, "record": record(__spec__.name, argv)}   # a key in .json / .jsonl
    print(header(__spec__.name, argv))                       # the first line of .md / .log / .txt

    python -m benchmarks.record bash benchmarks/tools/gpu_check.sh   # that line, for shell scripts
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _torch() -> tuple[str | None, str | None]:
    """(torch version, name of GPU 0), None where there is none."""
    try:
        import torch
    except ImportError:
        return None, None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return torch.__version__, gpu


def _join(argv: list[str]) -> str:
    """shlex.join, but leading NAME=VALUE environment assignments stay assignments."""
    words, env = [], True
    for arg in argv:
        name, eq, value = arg.partition("=")
        env = env and bool(eq) and name.isidentifier()
        words.append(f"{name}={shlex.quote(value)}" if env else shlex.quote(arg))
    return " ".join(words)


def record(module: str | None = None, argv: list[str] | None = None) -> dict:
    """{"command", "commit", "dirty", "date", "machine", "torch"} of this run. The command is
    `python -m MODULE ARGV...` (ARGV: this process's arguments unless given); without a module,
    ARGV is the whole command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", module, *argv]) if module else _join(argv)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    version, gpu = _torch()
    return {
        "command": command,
        "commit": commit or "unknown",
        "dirty": bool(status) if status is not None else None,  # tracked files differed from it
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": _cpu_name(), "cpus": os.cpu_count(),
                    "gpu": gpu},  # fmt: skip
        "torch": version,
    }


def header(module: str | None = None, argv: list[str] | None = None) -> str:
    """record() as one comment line: `# record: {...}`."""
    return "# record: " + json.dumps(record(module, argv))


if __name__ == "__main__":
    print(header(None, sys.argv[1:]))
