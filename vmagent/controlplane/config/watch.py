"""``ConfigDirectory``: a directory of Istio YAML files, watched by polling file metadata.

Every ``interval`` (0.2 s by default) the directory is scanned (recursively, hidden entries skipped)
and a file whose (mtime, size, inode) changed is re-read. A file that fails validation keeps its last
good objects in force and its errors are reported by ``errors()`` and logged once per change; a deleted
file's objects are removed. Files modified in the last two seconds are also compared by content hash, so
two quick edits of the same size within one timestamp tick are not missed. Polling needs nothing beyond the standard library and also works on network
and container file systems where inotify does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmagent.controlplane.config.issues import Issue
from vmagent.controlplane.config.loader import LoadResult, collect_files, dedupe, load_text
from vmagent.controlplane.config.polling import PollingSource
from vmagent.controlplane.model import ConfigObject

Key = tuple[str, str, str]
Stat = tuple[int, int, int]
# A file modified this recently may change again within the file system's timestamp granularity without
# its (mtime, size, inode) changing, so its content hash is compared on every poll until it is older.
RACY_NS = 2_000_000_000
log = logging.getLogger(__name__)


@dataclass
class _FileState:
    stat: Stat
    digest: bytes = b""
    objects: list[ConfigObject] = field(default_factory=list)  # last good version
    errors: list[Issue] = field(default_factory=list)  # of the current content (empty when valid)
    warnings: list[Issue] = field(default_factory=list)


class ConfigDirectory(PollingSource):
    """The config directory as a config source (see ``ConfigSource``)."""

    name = "config directory"

    def __init__(self, root: Path, interval: float = 0.2) -> None:
        self.root = root
        super().__init__(interval)
        self._poll_lock = threading.Lock()
        self._files: dict[Path, _FileState] = {}
        self._objects: dict[Key, ConfigObject] = {}
        self._dup_errors: list[Issue] = []
        self._root_error = ""

    def poll(self) -> bool:
        """Scan once; True when the directory's objects changed (subscribers were then called)."""
        with self._poll_lock:
            return self._poll()

    def _poll(self) -> bool:
        root_error = ""
        scan_failed = False
        if not self.root.is_dir():
            root_error = f"{self.root}: config directory does not exist"
            files: list[Path] = []
        else:
            try:
                files = collect_files(self.root)
            except OSError as exc:
                root_error = f"{self.root}: cannot scan config directory: {exc}"
                scan_failed = True
                files = list(self._files)
        if root_error and root_error != self._root_error:
            log.error("%s", root_error)
        current: dict[Path, Stat] = {}
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            current[f] = (st.st_mtime_ns, st.st_size, st.st_ino)
        states = dict(self._files)
        touched = False
        for f in list(states):
            if f not in current and not scan_failed:
                del states[f]
                touched = True
                log.info("config file %s removed", f)
        now_ns = time.time_ns()
        for f, stat in current.items():
            old = states.get(f)
            if old is not None and old.stat == stat and now_ns - stat[0] > RACY_NS:
                continue
            try:
                data = f.read_bytes()
            except OSError as exc:
                data = f"\0cannot read: {exc}".encode()
            digest = hashlib.sha256(data).digest()
            if old is not None and old.digest == digest:
                if old.stat != stat:
                    states[f] = dataclasses.replace(old, stat=stat)
                continue
            touched = True
            states[f] = self._reload(f, stat, digest, data, old)
        if not touched and root_error == self._root_error:
            return False
        ordered = sorted(states)
        objects, dups = dedupe(o for f in ordered for o in states[f].objects)
        merged = {o.key: o for o in objects}
        with self._lock:
            self._files = states
            self._root_error = root_error
            for d in dups:
                if d not in self._dup_errors:
                    log.error("%s", d)
            self._dup_errors = dups
            changed = merged != self._objects
            self._objects = merged
            subscribers = list(self._subscribers)
        if changed:
            for cb in subscribers:
                cb()
        return changed

    def _reload(
        self, path: Path, stat: Stat, digest: bytes, data: bytes, old: _FileState | None
    ) -> _FileState:
        try:
            result = load_text(data.decode("utf-8"), str(path))
        except UnicodeDecodeError as exc:
            result = LoadResult(errors=[Issue(str(path), "", "", f"cannot read file: {exc}")])
        for w in result.warnings:
            log.warning("%s", w)
        if result.ok:
            log.info("config file %s loaded: %d objects", path, len(result.objects))
            return _FileState(stat, digest, result.objects, [], result.warnings)
        for e in result.errors:
            log.error("%s", e)
        kept = old.objects if old is not None else []
        if kept:
            log.error("%s: invalid, keeping its last good version (%d objects)", path, len(kept))
        return _FileState(stat, digest, kept, result.errors, result.warnings)

    def objects(self) -> dict[Key, ConfigObject]:
        with self._lock:
            return dict(self._objects)

    def errors(self) -> list[str]:
        """Current problems: invalid files (kept at their last good version), duplicates, a missing root."""
        with self._lock:
            out = [self._root_error] if self._root_error else []
            out += [str(e) for f in sorted(self._files) for e in self._files[f].errors]
            out += [str(e) for e in self._dup_errors]
            return out

    def warnings(self) -> list[str]:
        with self._lock:
            return [str(w) for f in sorted(self._files) for w in self._files[f].warnings]
