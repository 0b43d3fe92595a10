"""File helpers: atomic writes with explicit modes, private directories."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    """Create ``path`` (and parents) if needed and set its mode."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The temporary file is created with ``mode`` from the start, so a secret is never readable by others,
    even for an instant.
    """
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
