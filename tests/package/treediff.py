"""Whole-tree snapshots of a root file system, to prove that removing a package leaves nothing behind.

``snapshot(root)`` records every path under ``root`` (not following symlinks) with its type, permission
bits, owner and group, and a symlink's target. ``leftovers(before, after, allowed)`` lists what differs
(added, removed or changed paths), minus the paths ``allowed`` names, each allowed path with the reason
it may differ. File contents are not compared: the package manager's own database and the account files
change content by design; what a package must not leave behind are paths.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    kind: str  # "d", "f", "l" or "other"
    mode: int  # permission bits (07777)
    uid: int
    gid: int
    target: str = ""  # a symlink's target

    def __str__(self) -> str:
        text = f"{self.kind} {self.mode:04o} {self.uid}:{self.gid}"
        return f"{text} -> {self.target}" if self.kind == "l" else text


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    return "other"


def snapshot(root: Path) -> dict[str, Entry]:
    """Every path below ``root`` as an absolute path inside it ("/etc/passwd") -> Entry."""
    entries: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            target = os.readlink(full) if kind == "l" else ""
            inside = "/" + os.path.relpath(full, root)
            entries[inside] = Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, target)
    return entries


def _allowed(path: str, allowed: Mapping[str, str]) -> bool:
    """``allowed`` keys are exact paths, or paths ending in "/": that directory and everything below it."""
    return path in allowed or any(
        key.endswith("/") and (path.startswith(key) or path == key[:-1]) for key in allowed
    )


def leftovers(
    before: Mapping[str, Entry], after: Mapping[str, Entry], allowed: Mapping[str, str]
) -> list[str]:
    """Lines ``+ PATH (entry)``, ``- PATH (entry)`` and ``~ PATH (old => new)`` for every difference not
    covered by ``allowed`` (path or "prefix/" -> why it may differ), sorted by path."""
    out: list[str] = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new or _allowed(path, allowed):
            continue
        if old is None:
            out.append(f"+ {path} ({new})")
        elif new is None:
            out.append(f"- {path} ({old})")
        else:
            out.append(f"~ {path} ({old} => {new})")
    return out
