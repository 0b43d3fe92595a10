"""Resources patched by an EnvoyFilter (Lua before the router, cluster MERGE) pass real Envoy's validation,
and a broken Lua script is refused by Envoy, so the check can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from tests.unit.test_translate_envoyfilter import REVIEWS, ef, lua_filter
from tests.unit.test_translate_envoyfilter import build as build_resources
from vmagent.agent.envoy_bootstrap import find_envoy_binary
from vmagent.common.errors import CommandError
from vmagent.common.proc import run
from vmagent.controlplane.translate import MeshOptions
from vmagent.controlplane.translate.static import static_bootstrap


def _validate(spec: dict[str, object], tmp_path: Path) -> None:
    resources = build_resources(REVIEWS, [ef(spec)])
    doc = MessageToDict(static_bootstrap(resources, MeshOptions(), sds_socket=str(tmp_path / "sds.sock")))
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(doc, indent=1))
    run([str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"], timeout=60)


def test_lua_patched_config_is_valid_for_envoy(tmp_path: Path) -> None:
    _validate(lua_filter(), tmp_path)


def test_broken_lua_is_refused_by_envoy(tmp_path: Path) -> None:
    spec = lua_filter()
    spec["configPatches"][0]["patch"]["value"]["typed_config"]["inlineCode"] = "function envoy_on_response("  # type: ignore[index]
    with pytest.raises(CommandError):
        _validate(spec, tmp_path)
