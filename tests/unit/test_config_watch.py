"""The watched config directory, the SQLite store source and their merged view (real files, real SQLite)."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for
from vmagent.common.fsutil import atomic_write
from vmagent.controlplane.config.loader import load_text
from vmagent.controlplane.config.snapshot import ConfigSet, ConfigSnapshot
from vmagent.controlplane.config.store import ConfigStore, StoreSource
from vmagent.controlplane.config.watch import ConfigDirectory


def we(name: str, address: str, ns: str = "demo") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {{name: {name}, namespace: {ns}}}
        spec: {{address: {address}}}
        """
    )


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, ConfigDirectory, ConfigSet, list[ConfigSnapshot]]]:
    root = tmp_path / "conf"
    root.mkdir()
    (root / "a.yaml").write_text(we("a", "10.0.0.1"))
    directory = ConfigDirectory(root, interval=0.05)
    configs = ConfigSet([directory])
    seen: list[ConfigSnapshot] = []
    configs.subscribe(seen.append)
    configs.start()
    try:
        yield root, directory, configs, seen
    finally:
        configs.stop()


def address(configs: ConfigSet, name: str) -> str | None:
    obj = configs.get("WorkloadEntry", "demo", name)
    return obj.spec["address"] if obj else None


def test_change_is_live_within_one_second_and_subscribers_are_told(watched) -> None:  # type: ignore[no-untyped-def]
    root, _, configs, seen = watched
    assert address(configs, "a") == "10.0.0.1"
    first = configs.version
    (root / "a.yaml").write_text(we("a", "10.0.0.2"))  # in place, as an editor saving the file does
    wait_for(lambda: address(configs, "a") == "10.0.0.2", timeout=1.0, what="edited file to be live")
    atomic_write(root / "sub" / "b.yml", we("b", "10.0.0.3"))  # new file in a subdirectory
    wait_for(lambda: address(configs, "b") == "10.0.0.3", timeout=1.0, what="new file to be live")
    assert seen[-1].version == configs.version > first
    assert [o.name for o in seen[-1].list("WorkloadEntry", "demo")] == ["a", "b"]


def test_invalid_edit_keeps_last_good_version_and_reports_error(watched) -> None:  # type: ignore[no-untyped-def]
    root, directory, configs, _ = watched
    path = root / "a.yaml"
    path.write_text(we("a", "10.0.0.1").replace("address:", "adress:"))
    expected = f"{path}: WorkloadEntry demo/a: spec.adress: unknown field 'adress' in WorkloadEntry (did you mean 'address'?)"
    wait_for(lambda: expected in configs.errors(), timeout=1.0, what="error to be reported")
    assert address(configs, "a") == "10.0.0.1"
    assert directory.errors() == [
        expected,
        f"{path}: WorkloadEntry demo/a: spec.address: required field is "
        "missing (it may be omitted only when 'network' is set)",
    ]
    path.write_text(we("a", "10.0.0.5"))
    wait_for(lambda: address(configs, "a") == "10.0.0.5", timeout=1.0, what="fixed file to be live")
    assert configs.errors() == []


def test_deleted_file_removes_its_objects_and_hidden_files_are_ignored(watched) -> None:  # type: ignore[no-untyped-def]
    root, _, configs, _ = watched
    (root / ".a.yaml.swp").write_text("not: yaml: at all")
    (root / "b.yaml").write_text(we("b", "10.0.0.3"))
    wait_for(lambda: address(configs, "b"), timeout=1.0, what="b to appear")
    (root / "a.yaml").unlink()
    wait_for(lambda: address(configs, "a") is None, timeout=1.0, what="a to disappear")
    assert [o.name for o in configs.list("WorkloadEntry")] == ["b"]
    assert configs.errors() == []


def test_duplicate_across_files_keeps_first_and_reports(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(we("x", "10.0.0.1"))
    (tmp_path / "b.yaml").write_text(we("x", "10.0.0.2"))
    directory = ConfigDirectory(tmp_path)
    assert directory.poll() is True
    assert [o.spec["address"] for o in directory.objects().values()] == ["10.0.0.1"]
    assert directory.errors() == [
        f"{tmp_path / 'b.yaml'}: WorkloadEntry demo/x: metadata.name: duplicate object: WorkloadEntry demo/x is "
        f"already defined in {tmp_path / 'a.yaml'}"
    ]


def test_missing_directory_is_reported_not_fatal(tmp_path: Path) -> None:
    directory = ConfigDirectory(tmp_path / "nope")
    directory.poll()
    assert directory.objects() == {}
    assert directory.errors() == [f"{tmp_path / 'nope'}: config directory does not exist"]


def test_store_changes_from_another_connection_reach_the_merged_view_and_directory_wins(
    tmp_path: Path,
) -> None:
    root = tmp_path / "conf"
    root.mkdir()
    (root / "a.yaml").write_text(we("shared", "10.0.0.1"))
    directory = ConfigDirectory(root, interval=0.05)
    source = StoreSource(ConfigStore.open(tmp_path / "state"), interval=0.05)
    configs = ConfigSet([directory, source])
    changed = threading.Event()
    configs.subscribe(lambda _s: changed.set())
    configs.start()
    try:
        writer = ConfigStore.open(tmp_path / "state")  # as `vmagent-cp apply` in another process
        objs = load_text(
            we("shared", "10.9.9.9") + "---\n" + we("stored", "10.0.0.7"), "applied.yaml"
        ).objects
        writer.apply(objs)
        wait_for(
            lambda: address(configs, "stored") == "10.0.0.7", timeout=1.0, what="stored object to be live"
        )
        assert changed.is_set()
        assert configs.get("WorkloadEntry", "demo", "stored").source == "store"  # type: ignore[union-attr]
        assert address(configs, "shared") == "10.0.0.1"
        assert configs.warnings() == [
            f"state store: WorkloadEntry demo/shared: ignored, the config directory defines the same object "
            f"({root / 'a.yaml'})"
        ]
        (root / "a.yaml").unlink()
        wait_for(
            lambda: address(configs, "shared") == "10.9.9.9", timeout=1.0, what="store's copy to take over"
        )
        assert writer.delete([("WorkloadEntry", "demo", "stored")]) == 1
        wait_for(lambda: address(configs, "stored") is None, timeout=1.0, what="deleted object to go")
    finally:
        configs.stop()


def test_store_apply_counts_and_generation(tmp_path: Path) -> None:
    store = ConfigStore.open(tmp_path)
    objs = load_text(we("a", "10.0.0.1") + "---\n" + we("b", "10.0.0.2"), "x.yaml").objects
    gen0 = store.generation()
    r = store.apply(objs)
    assert (r.created, r.updated, r.unchanged) == (2, 0, 0)
    gen1 = store.generation()
    assert gen1 > gen0
    r = store.apply(objs)
    assert (r.created, r.updated, r.unchanged) == (0, 0, 2)
    assert store.generation() == gen1
    changed = load_text(we("a", "10.0.0.9"), "x.yaml").objects
    assert store.apply(changed).updated == 1
    assert {o.name: o.spec["address"] for o in store.list_objects()} == {"a": "10.0.0.9", "b": "10.0.0.2"}
    assert (tmp_path / "state.db").stat().st_mode & 0o777 == 0o600
