"""A WasmPlugin's translation (its ECDS Wasm configuration inlined into the HTTP filters) passes real
Envoy's validation with the WAT-built proxy-wasm module, and a module Envoy cannot load is refused, so
the check can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from tests.harness import require_tool
from tests.unit.test_translate_wasm import API, build, plugin
from tests.wasm_module import build_module, sha256_of
from vmagent.agent.envoy_bootstrap import find_envoy_binary
from vmagent.common.errors import CommandError
from vmagent.common.proc import run
from vmagent.controlplane.translate import MeshOptions
from vmagent.controlplane.translate.static import static_bootstrap
from vmagent.controlplane.xds.snapshot import EXTENSION_CONFIG


def _validate(module: Path, tmp_path: Path) -> None:
    resources = build(API, [plugin(module, pluginConfig={"value": "v"}, phase="AUTHZ")])
    assert "demo.p" in resources[EXTENSION_CONFIG]
    doc = MessageToDict(static_bootstrap(resources, MeshOptions(), sds_socket=str(tmp_path / "sds.sock")))
    assert "envoy.wasm.runtime.v8" in json.dumps(doc)
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(doc, indent=1))
    run([str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"], timeout=120)


def test_wasm_plugin_config_is_valid_for_envoy(tmp_path: Path) -> None:
    require_tool("wat2wasm")
    module = build_module(tmp_path)
    assert len(sha256_of(module)) == 64
    _validate(module, tmp_path)


def test_module_envoy_cannot_load_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm\x01\0\0\0\x7fgarbage")
    with pytest.raises(CommandError) as info:
        _validate(broken, tmp_path)
    assert "wasm" in str(info.value).lower()
