"""WasmPlugin end to end: a proxy-wasm module built here from WAT runs in the api VM's Envoy.

A control plane, a client VM ``web`` (no application) and one ``demo/api`` VM in network namespaces.
The module (tests/testdata/wasm/add_header.wat, compiled with wat2wasm at test time) adds
``x-wasm: VALUE`` to responses, VALUE coming from the WasmPlugin's ``pluginConfig``. The control plane
reads it from its own file system and ships it to the selected proxy over ECDS; ``web`` sees the header
on the api's responses, and stops seeing it once the WasmPlugin is removed. A WasmPlugin whose sha256
does not match the module is refused by validation and never reaches a proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from tests.system.demo_mesh import API_URL, web_and_api_mesh
from tests.wasm_module import HEADER, build_module, sha256_of
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    require_tool("wat2wasm")
    with web_and_api_mesh(Path(tmp_path_factory.mktemp("wasm")), "vmwa", "10.230.77.0/24") as lab:
        yield lab


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_module(Path(tmp_path_factory.mktemp("module")))


def plugin_yaml(module: Path, sha256: str, value: str) -> str:
    return f"""\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: add-header, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  url: file://{module}
  sha256: "{sha256}"
  phase: STATS
  pluginConfig: {{value: {value}}}
"""


def wasm_header(vm: VmHost) -> str:
    """The x-wasm header of one response from api to ``vm`` ("" when absent); "" also on a failed call."""
    r = vm.curl(API_URL, "-o", "/dev/null", "-D", "-")
    lines = r.stdout.strip().splitlines()
    if not lines or lines[-1] != "200":
        return f"<status {lines[-1] if lines else '?'}>"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith(HEADER + ":")), "")


def seen(vm: VmHost) -> set[str]:
    return {wasm_header(vm) for _ in range(10)}


def test_wasmplugin_on_api_adds_a_response_header_seen_by_web(lab: MeshLab, module: Path) -> None:
    assert lab.cp is not None
    web = lab.vms["web"]
    assert seen(web) == {""}
    path = lab.cp.write_config("40-wasm.yaml", plugin_yaml(module, sha256_of(module), "from-api"))
    try:
        wait_for(lambda: seen(web) == {"from-api"}, timeout=60, what="x-wasm: from-api on responses to web")
        api_dump = lab.vms["api"].envoy_admin("/config_dump")
        assert "demo.add-header" in api_dump and "envoy.wasm.runtime.v8" in api_dump
        assert "demo.add-header" not in web.envoy_admin("/config_dump"), "web is not selected"
        # A new pluginConfig reaches the running proxy (a new ECDS version).
        path.write_text(plugin_yaml(module, sha256_of(module), "changed"))
        wait_for(lambda: seen(web) == {"changed"}, timeout=60, what="x-wasm: changed after the update")
    finally:
        path.unlink(missing_ok=True)
    wait_for(lambda: seen(web) == {""}, timeout=60, what="x-wasm gone after removing the WasmPlugin")
    wait_for(
        lambda: "demo.add-header" not in lab.vms["api"].envoy_admin("/config_dump"),
        timeout=60,
        what="the filter gone from api's Envoy",
    )


def test_wasmplugin_with_a_wrong_sha256_is_refused(lab: MeshLab, module: Path, tmp_path: Path) -> None:
    assert lab.cp is not None
    web = lab.vms["web"]
    wrong = "0" * 64
    doc = tmp_path / "wasm.yaml"
    doc.write_text(plugin_yaml(module, wrong, "never"))
    r = lab.cp.cli("validate", "-f", str(doc), check=False)
    assert r.returncode == 1
    assert (
        f"WasmPlugin demo/add-header: spec.sha256: the module {module} has sha256 {sha256_of(module)}, not {wrong}"
        in r.stdout + r.stderr
    )
    path = lab.cp.write_config("41-wasm-bad.yaml", plugin_yaml(module, wrong, "never"))
    try:
        wait_for(
            lambda: any(
                "41-wasm-bad.yaml" in e and "sha256" in e for e in lab.cp.api("/api/v1/config/errors")
            ),  # type: ignore[union-attr]
            timeout=30,
            what="the sha256 error in the control plane's error list",
        )
        # Refused: the control plane keeps its last good configuration, which has no WasmPlugin. (Checked
        # on api's Envoy rather than by traffic, which may still reuse a connection to the drained listener.)
        assert "demo.add-header" not in lab.vms["api"].envoy_admin("/config_dump")
        assert "never" not in seen(web)
    finally:
        path.unlink(missing_ok=True)
