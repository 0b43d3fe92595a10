"""WasmPlugin validation: Istio's schema rules, and what vmagent refuses (remote modules, NETWORK plugins).

One test per rule, named after it. The module files are written here (the 8 bytes of an empty Wasm
module: validation reads the header, size and hash, not the code).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from vmagent.controlplane.config.compat import compat_report
from vmagent.controlplane.config.loader import load_paths
from vmagent.controlplane.config.validate import DocResult, validate_document
from vmagent.controlplane.config.wasmplugin import MAX_MODULE_BYTES

API = "extensions.istio.io/v1alpha1"
EMPTY_MODULE = b"\0asm\x01\0\0\0"


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "plugin.wasm"
    path.write_bytes(EMPTY_MODULE)
    return path


def check(spec: dict[str, Any], api: str = API) -> DocResult:
    doc = {
        "apiVersion": api,
        "kind": "WasmPlugin",
        "metadata": {"name": "p", "namespace": "demo"},
        "spec": spec,
    }
    return validate_document(doc, "f.yaml", 1)


def errors(spec: dict[str, Any]) -> list[str]:
    return [f"{e.path}: {e.message}" for e in check(spec).errors]


def valid(spec: dict[str, Any]) -> DocResult:
    result = check(spec)
    assert result.errors == [], [str(e) for e in result.errors]
    assert result.obj is not None
    return result


def url(path: Path) -> str:
    return f"file://{path}"


def test_istio_reference_example_with_every_http_field_accepted(module: Path) -> None:
    result = valid(
        {
            "selector": {"matchLabels": {"app": "api"}},
            "url": url(module),
            "sha256": hashlib.sha256(EMPTY_MODULE).hexdigest(),
            "imagePullPolicy": "IfNotPresent",
            "phase": "AUTHN",
            "priority": 10,
            "pluginName": "root",
            "pluginConfig": {"openid_server": "authn", "nested": {"list": [1, 2]}},
            "failStrategy": "FAIL_OPEN",
            "vmConfig": {"env": [{"name": "POD_NAME", "valueFrom": "HOST"}, {"name": "A", "value": "b"}]},
            "match": [{"mode": "SERVER", "ports": [{"number": 8080}]}],
            "type": "HTTP",
        }
    )
    assert result.warnings == []


def test_url_is_required() -> None:
    assert errors({}) == ["spec.url: required field is missing"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("oci://registry.example.com/filters/openid:1.0", "oci://"),
        ("http://example.com/plugin.wasm", "http://"),
        ("https://example.com/plugin.wasm", "https://"),
        ("registry.example.com/filters/openid:1.0", "an OCI image (no scheme defaults to oci://)"),
    ],
)
def test_url_remote_schemes_not_supported_by_vmagent(value: str, shown: str) -> None:
    result = check({"url": value})
    assert [e.path for e in result.errors] == ["spec.url"]
    message = result.errors[0].message
    assert message.startswith(f"{shown} modules are not supported by vmagent: refused")
    assert "file://" in message
    assert result.errors[0].compat == "refused"


def test_url_scheme_must_be_http_https_file_or_oci() -> None:
    assert errors({"url": "ftp://example.com/p.wasm"}) == [
        "spec.url: url must have schema one of [http, https, file, oci], got 'ftp://example.com/p.wasm'"
    ]


def test_url_file_path_must_be_absolute() -> None:
    [message] = errors({"url": "file://plugin.wasm"})
    assert message == "spec.url: the module path 'plugin.wasm' must be absolute (file:///path/to/module.wasm)"


def test_url_file_must_exist_on_the_control_plane_host(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wasm"
    assert errors({"url": url(missing)}) == [
        f"spec.url: no module file at {missing} on the control plane host"
    ]


def test_url_file_must_be_a_wasm_binary(tmp_path: Path) -> None:
    text = tmp_path / "plugin.wat"
    text.write_text("(module)")
    assert errors({"url": url(text)}) == [
        f"spec.url: {text} is not a WebAssembly binary module (no '\\0asm' header)"
    ]


def test_url_file_size_limited(tmp_path: Path) -> None:
    big = tmp_path / "big.wasm"
    big.write_bytes(EMPTY_MODULE + b"\0" * MAX_MODULE_BYTES)
    [message] = errors({"url": url(big)})
    assert message == (
        f"spec.url: the module {big} has more than vmagent's limit of {MAX_MODULE_BYTES} bytes "
        "(its bytes are sent to the proxies over xDS)"
    )


def test_sha256_must_be_64_lower_case_hex(module: Path) -> None:
    assert errors({"url": url(module), "sha256": "ABC"}) == [
        "spec.sha256: sha256 must be 64 lower-case hex digits, got 'ABC'"
    ]
    assert errors({"url": url(module), "sha256": "A" * 64}) == [
        f"spec.sha256: sha256 must be 64 lower-case hex digits, got {'A' * 64!r}"
    ]


def test_sha256_empty_is_accepted_as_no_check(module: Path) -> None:
    valid({"url": url(module), "sha256": ""})


def test_sha256_must_match_the_module(module: Path) -> None:
    actual = hashlib.sha256(EMPTY_MODULE).hexdigest()
    assert errors({"url": url(module), "sha256": "0" * 64}) == [
        f"spec.sha256: the module {module} has sha256 {actual}, not {'0' * 64}"
    ]


@pytest.mark.parametrize("phase", ["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"])
def test_phase_values_accepted(module: Path, phase: str) -> None:
    valid({"url": url(module), "phase": phase})


def test_phase_unknown_value_refused(module: Path) -> None:
    [message] = errors({"url": url(module), "phase": "authn"})
    assert message.startswith("spec.phase: ")
    assert "AUTHN" in message


@pytest.mark.parametrize("strategy", ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"])
def test_fail_strategy_values_accepted(module: Path, strategy: str) -> None:
    valid({"url": url(module), "failStrategy": strategy})


def test_fail_strategy_unknown_value_refused(module: Path) -> None:
    [message] = errors({"url": url(module), "failStrategy": "FAIL_SOMETIMES"})
    assert message.startswith("spec.failStrategy: ")


def test_priority_is_an_int32(module: Path) -> None:
    [message] = errors({"url": url(module), "priority": 2**31})
    assert message.startswith("spec.priority: ")


def test_empty_selector_selects_the_whole_namespace(module: Path) -> None:
    valid({"url": url(module), "selector": {}})
    valid({"url": url(module), "selector": {"matchLabels": {}}})


def test_selector_empty_key_refused(module: Path) -> None:
    assert errors({"url": url(module), "selector": {"matchLabels": {"": "x"}}}) == [
        "spec.selector.matchLabels['']: empty key is not supported in selector"
    ]


def test_selector_wildcard_value_refused(module: Path) -> None:
    [message] = errors({"url": url(module), "selector": {"matchLabels": {"app": "*"}}})
    assert "wildcard is not supported in selector" in message


def test_selector_and_target_refs_exclude_each_other(module: Path) -> None:
    [message] = errors(
        {
            "url": url(module),
            "selector": {"matchLabels": {"app": "a"}},
            "targetRefs": [{"kind": "Service", "name": "a"}],
        }
    )
    assert message.startswith("spec: only one of 'selector', 'targetRef', 'targetRefs' may be set")


def test_target_ref_cross_namespace_refused(module: Path) -> None:
    [message] = errors(
        {"url": url(module), "targetRef": {"kind": "Service", "name": "a", "namespace": "other"}}
    )
    assert message == (
        "spec.targetRef.namespace: targetRef namespace must not be set; cross namespace referencing is not supported"
    )


def test_match_mode_values(module: Path) -> None:
    for mode in ("UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"):
        valid({"url": url(module), "match": [{"mode": mode}]})
    [message] = errors({"url": url(module), "match": [{"mode": "INBOUND"}]})
    assert message.startswith("spec.match[0].mode: ")


def test_match_port_number_required_and_in_range(module: Path) -> None:
    assert errors({"url": url(module), "match": [{"ports": [{}]}]}) == [
        "spec.match[0].ports[0].number: required field is missing"
    ]
    [message] = errors({"url": url(module), "match": [{"ports": [{"number": 70000}]}]})
    assert message.startswith("spec.match[0].ports[0].number: ")


def test_match_ports_unique(module: Path) -> None:
    assert errors({"url": url(module), "match": [{"ports": [{"number": 80}, {"number": 80}]}]}) == [
        "spec.match[0].ports[1]: duplicate port 80"
    ]


def test_vm_env_value_only_with_inline(module: Path) -> None:
    spec = {"url": url(module), "vmConfig": {"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}}
    assert errors(spec) == ["spec.vmConfig.env[0].value: value may only be set when valueFrom is INLINE"]


def test_vm_env_names_unique_and_nonempty(module: Path) -> None:
    spec = {"url": url(module), "vmConfig": {"env": [{"name": "A"}, {"name": "A"}]}}
    assert errors(spec) == ["spec.vmConfig.env[1]: duplicate environment variable 'A'"]
    [message] = errors({"url": url(module), "vmConfig": {"env": [{"name": ""}]}})
    assert message.startswith("spec.vmConfig.env[0].name: ")


def test_plugin_config_must_be_a_mapping(module: Path) -> None:
    assert errors({"url": url(module), "pluginConfig": "x"}) == [
        "spec.pluginConfig: expected a mapping, got 'x'"
    ]


def test_network_type_not_supported_by_vmagent(module: Path) -> None:
    result = check({"url": url(module), "type": "NETWORK"})
    assert [f"{e.path}: {e.message}" for e in result.errors] == [
        "spec.type: NETWORK Wasm plugins are not supported by vmagent: refused (only HTTP filters are built)"
    ]
    assert result.errors[0].compat == "refused"


def test_verification_key_ignored_with_a_warning(module: Path) -> None:
    result = valid({"url": url(module), "verificationKey": "k"})
    assert [w.path for w in result.warnings] == ["spec.verificationKey"]
    assert "not supported by vmagent: ignored" in result.warnings[0].message


def test_only_v1alpha1(module: Path) -> None:
    [message] = [e.message for e in check({"url": url(module)}, api="extensions.istio.io/v1").errors]
    assert message.startswith("unsupported apiVersion 'extensions.istio.io/v1' for WasmPlugin")


def test_remote_module_is_in_the_istio_compat_report(tmp_path: Path) -> None:
    doc = tmp_path / "w.yaml"
    doc.write_text(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p, namespace: demo}\n"
        "spec: {url: 'oci://r.example.com/p:1'}\n"
    )
    report = compat_report(load_paths([doc]))
    assert [(i.path, i.compat) for i in report] == [("spec.url", "refused")]
