"""User-facing errors: one line naming the file, line and problem; the CLI exits with 2."""
from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input or configuration. Shown as one line, without a traceback (unless --debug)."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.reason = message  # the message without the file and line
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        super().__init__(where + message)


class ConfigError(UserError):
    """A configuration key or value is wrong."""
