"""The typed spec views mirror the config schema field by field, and build from validated YAML."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

import pytest

from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.config.types import STR, F, ListOf, MapOf, Msg, Type
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.specs import VIEWS, ServiceEntry, WorkloadEntry, WorkloadGroup
from vmagent.controlplane.specs.build import view_fields
from vmagent.controlplane.specs.security import MutualTLS, PeerAuthentication


def _unwrap_hint(hint: Any) -> Any:
    """The element class of ``X | None``, ``tuple[X, ...]`` and ``Mapping[str, X]``."""
    while True:
        origin = get_origin(hint)
        if origin in (Union, types.UnionType):
            hint = next(a for a in get_args(hint) if a is not type(None))
        elif origin is tuple:
            hint = get_args(hint)[0]
        elif origin in (Mapping, dict):
            hint = get_args(hint)[1]
        else:
            return hint


def _unwrap_schema(node: Type) -> Type:
    while isinstance(node, ListOf | MapOf):
        node = node.elem if isinstance(node, ListOf) else node.value
    return node


def _drift(cls: type[Any], msg: Msg, path: str) -> list[str]:
    problems = []
    hints = view_fields(cls)
    for key in sorted(set(msg.fields) - set(hints)):
        problems.append(f"{path}.{key}: in the schema {msg.name}, no attribute in {cls.__name__}")
    for key in sorted(set(hints) - set(msg.fields)):
        problems.append(f"{path}.{key}: attribute of {cls.__name__}, not in the schema {msg.name}")
    for key in sorted(set(hints) & set(msg.fields)):
        spec: F = msg.fields[key]
        node = _unwrap_schema(spec.resolve())
        inner = _unwrap_hint(hints[key])
        if isinstance(node, Msg):
            if not dataclasses.is_dataclass(inner):
                problems.append(f"{path}.{key}: schema message {node.name}, view type {inner!r}")
            else:
                problems.extend(_drift(inner, node, f"{path}.{key}"))  # type: ignore[arg-type]
        elif dataclasses.is_dataclass(inner):
            problems.append(f"{path}.{key}: view class {inner!r} for a schema scalar")
    return problems


@pytest.mark.parametrize("kind", sorted(VIEWS))
def test_view_matches_schema(kind: str) -> None:
    schema = KINDS[kind].spec
    assert isinstance(schema, Msg)
    assert _drift(VIEWS[kind], schema, "spec") == []


@dataclasses.dataclass(frozen=True)
class _Inner:
    z: int = 0


@dataclasses.dataclass(frozen=True)
class _View:
    foo_bar: _Inner | None = None
    extra: str = ""


def test_drift_is_reported() -> None:
    msg = Msg("M", {"fooBar": Msg("Inner", {"x": F(Msg("Deep", {"y": STR}))})})
    assert _drift(_View, msg, "spec") == [
        "spec.extra: attribute of _View, not in the schema M",
        "spec.fooBar.x: in the schema Inner, no attribute in _Inner",
        "spec.fooBar.z: attribute of _Inner, not in the schema Inner",
    ]


def _obj(kind: str, spec: dict[str, Any]) -> ConfigObject:
    return ConfigObject(kind, "networking.istio.io/v1", "demo", "x", spec)


def test_service_entry_view_defaults_and_nesting() -> None:
    se = _obj(
        "ServiceEntry",
        {
            "hosts": ["api.example.com"],
            "ports": [{"number": 80.0, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "10.0.0.1", "ports": {"http": 8080}, "serviceAccount": "api"}],
        },
    ).spec_as(ServiceEntry)
    assert se.hosts == ("api.example.com",)
    assert se.resolution == "NONE" and se.location == "MESH_EXTERNAL"
    assert se.ports[0].number == 80 and isinstance(se.ports[0].number, int)
    assert se.ports[0].target_port == 0
    assert se.endpoints == (WorkloadEntry(address="10.0.0.1", ports={"http": 8080}, service_account="api"),)
    assert se.workload_selector is None


def test_view_is_built_once_and_kind_checked() -> None:
    obj = _obj("WorkloadGroup", {"template": {"serviceAccount": "vm"}, "metadata": {"labels": {"app": "a"}}})
    group = obj.spec_as(WorkloadGroup)
    assert group is obj.spec_as(WorkloadGroup)
    assert group.template.service_account == "vm" and group.metadata.labels == {"app": "a"}
    with pytest.raises(TypeError, match="WorkloadGroup demo/x has no ServiceEntry view"):
        obj.spec_as(ServiceEntry)


def test_port_keyed_maps_have_int_keys() -> None:
    pa = _obj(
        "PeerAuthentication", {"portLevelMtls": {"8080": {"mode": "STRICT"}, 9090: {"mode": "DISABLE"}}}
    )
    assert pa.spec_as(PeerAuthentication).port_level_mtls == {
        8080: MutualTLS("STRICT"),
        9090: MutualTLS("DISABLE"),
    }
