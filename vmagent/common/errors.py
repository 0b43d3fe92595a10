"""Typed errors shared by both sides. Each carries a message a user can act on."""

from __future__ import annotations


class VmagentError(Exception):
    """A failure the user can act on: the CLI prints the message on one line and exits 1."""


class ConfigError(VmagentError):
    """Invalid configuration; the message names the file, object and field."""


class CommandError(VmagentError):
    """An external command failed."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str) -> None:
        self.cmd = cmd
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"command {' '.join(cmd)!r} failed with status {returncode}: {detail}")


class CommandNotFound(VmagentError):
    """An external command is not installed."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        super().__init__(f"command {cmd[0]!r} not found; install it or put it on PATH")
