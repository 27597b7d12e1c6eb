"""The one error type of the local cluster: which component, what happened, where to look."""

from __future__ import annotations

from pathlib import Path


class ClusterError(RuntimeError):
    """A component of the local cluster could not be built, started or reached."""

    def __init__(self, component: str, what: str, log: Path | None = None, tail: str = "") -> None:
        self.component = component
        self.what = what
        self.log = log
        message = f"{component}: {what}"
        if log is not None:
            message += f"\n  log: {log}"
        if tail:
            indented = "\n".join(f"    {line}" for line in tail.rstrip().splitlines())
            message += f"\n  last lines of the log:\n{indented}"
        super().__init__(message)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, or nothing if it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
