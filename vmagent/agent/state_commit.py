"""Replace several of the agent's files as one step that a crash (SIGKILL, power loss) cannot split.

The identity is a key and a certificate chain (and the mesh root); a join also writes ``config.yaml`` and
``workloadgroup.json`` in the config dir. Each half alone is useless or wrong, so they are switched with a
small redo journal rather than one rename each:

1. every new file is written next to its final name as ``NAME.next`` (temp file, fsync, rename);
2. the journal ``STATE_DIR/identity.commit`` is written the same way, listing the renames still to do.
   Its presence is the commit point: before it, the old files are in force; after it, the new ones;
3. each ``NAME.next`` is renamed over ``NAME``; then the journal is removed.

``recover`` runs before anything reads these files (``vmagent run``, ``vmagent join``, ``vmagent status``
and every ``IdentityStore.load``): with a journal it finishes the renames (roll forward), without one it
deletes any ``.next`` file and any temp file an interrupted write left (roll back). Both are idempotent,
so a crash during recovery is repaired by the next one. The paths a reader opens never change
(``key.pem``, ``cert-chain.pem``, ...), and no reader sees a mix once recovery has run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from vmagent.agent.paths import AgentPaths
from vmagent.common.errors import VmagentError
from vmagent.common.fsutil import atomic_write, ensure_dir

JOURNAL_NAME = "identity.commit"
LOCK_NAME = ".identity.lock"
PENDING_SUFFIX = ".next"


def journal_path(paths: AgentPaths) -> Path:
    return paths.state_dir / JOURNAL_NAME


def pending(path: Path) -> Path:
    return path.with_name(path.name + PENDING_SUFFIX)


def _managed(paths: AgentPaths) -> list[Path]:
    return [
        paths.key_file,
        paths.chain_file,
        paths.root_file,
        paths.config_file,
        paths.workload_group_file,
    ]


def write_error(path: Path, exc: OSError) -> VmagentError:
    """A clear error naming the file, e.g. ``cannot write /var/lib/vmagent/key.pem.next: No space ...``."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = (
        " (free space on that filesystem; the current files are unchanged)"
        if exc.errno == errno.ENOSPC
        else ""
    )
    return VmagentError(f"cannot write {path}: {reason}{hint}")


def commit(paths: AgentPaths, files: list[tuple[Path, bytes | str, int]]) -> None:
    """Replace every ``(path, data, mode)`` together: after a crash at any point, all or none are new."""
    ensure_dir(paths.state_dir, 0o700)
    with _locked(paths):
        _recover(paths)
        _commit(paths, files)


def _commit(paths: AgentPaths, files: list[tuple[Path, bytes | str, int]]) -> None:
    staged: list[tuple[str, str]] = []
    for path, data, mode in files:
        nxt = pending(path)
        try:
            atomic_write(nxt, data, mode)
        except OSError as exc:
            _discard(paths)
            raise write_error(nxt, exc) from exc
        staged.append((str(nxt), str(path)))
    dirs = sorted({os.path.dirname(n) for n, _ in staged})
    for d in dirs:
        _fsync_dir(d)
    journal = journal_path(paths)
    try:
        atomic_write(journal, json.dumps({"renames": staged}), 0o600)
    except OSError as exc:
        _discard(paths)
        raise write_error(journal, exc) from exc
    _fsync_dir(str(journal.parent))
    _roll_forward(journal, staged)


def recover(paths: AgentPaths) -> str:
    """Finish or undo an interrupted ``commit``; returns what was done ("" when nothing was pending)."""
    if not paths.state_dir.is_dir():
        return ""
    with _locked(paths):
        return _recover(paths)


@contextlib.contextmanager
def _locked(paths: AgentPaths) -> Iterator[None]:
    """One commit or recovery at a time, across threads and processes (``join --rejoin`` beside ``run``)."""
    fd = os.open(paths.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _recover(paths: AgentPaths) -> str:
    journal = journal_path(paths)
    try:
        raw = journal.read_text()
    except FileNotFoundError:
        return "rolled back" if _discard(paths) else ""
    try:
        staged = [(str(a), str(b)) for a, b in json.loads(raw)["renames"]]
    except (ValueError, KeyError, TypeError) as exc:
        # atomic_write makes a torn journal impossible; refuse to guess rather than mix identities.
        raise VmagentError(f"{journal} is unreadable ({exc}); run `vmagent join --rejoin`") from exc
    _roll_forward(journal, staged)
    return "rolled forward"


def _roll_forward(journal: Path, staged: list[tuple[str, str]]) -> None:
    for nxt, final in staged:
        if os.path.exists(nxt):
            try:
                os.replace(nxt, final)
            except OSError as exc:
                raise VmagentError(
                    f"cannot finish the interrupted identity switch ({journal}): {final}: "
                    f"{os.strerror(exc.errno) if exc.errno else exc}; run `vmagent status` as root (outside "
                    "the unit, where the config dir is writable), which finishes it, then start the agent"
                ) from exc
    for d in sorted({os.path.dirname(f) for _, f in staged}):
        _fsync_dir(d)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    _fsync_dir(str(journal.parent))


def _discard(paths: AgentPaths) -> bool:
    """Delete staged ``.next`` files and temp files of interrupted writes (no journal: not committed)."""
    removed = False
    for final in [*_managed(paths), journal_path(paths)]:
        candidates = [] if final == journal_path(paths) else [pending(final)]
        if final.parent.is_dir():
            # temp files of atomic_write for our own writes (".NAME.next.XXXX", ".identity.commit.XXXX");
            # other writers' temp files (e.g. an edit of config.yaml) are not ours to remove
            tmp_of = final.name if final == journal_path(paths) else pending(final).name
            candidates += list(final.parent.glob(f".{tmp_of}.*"))
        for c in candidates:
            if not os.path.lexists(c):
                continue  # never unlink blindly: on a read-only mount that fails even for a missing file
            try:
                os.unlink(c)
                removed = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                # The agent's unit sees /etc/vmagent read-only: an uncommitted leftover there is never
                # read (no journal names it); the next `vmagent join` (as root) removes it.
    return removed


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
