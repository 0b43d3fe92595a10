"""The one helper through which every external command runs."""

from __future__ import annotations

import subprocess

from vmagent.common.errors import CommandError, CommandNotFound


def run(
    cmd: list[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` without a shell; raise CommandError (command, status, stderr) when it fails."""
    try:
        result = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except FileNotFoundError as exc:
        raise CommandNotFound(cmd) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(cmd, -1, f"timed out after {timeout:g}s") from exc
    if check and result.returncode != 0:
        raise CommandError(cmd, result.returncode, result.stderr)
    return result
