"""Fuzz the config loader and validator: any text gives a LoadResult (objects or errors), never an
exception, within the YAML limits."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.conftest import fuzzed
from vmagent.controlplane.config.loader import load_text
from vmagent.controlplane.config.validate import validate_document

# The files whose coverage is measured: the loader, the YAML limits, the validator and every kind's rules.
CONFIG_MODULES = (
    "vmagent.common.yamllimits",
    *(
    f"vmagent.controlplane.config.{m}"
    for m in (
        "loader", "validate", "kinds", "issues", "types", "common", "hosts", "destinationrule",
        "envoyfilter", "gateway", "security", "serviceentry", "sidecar", "telemetry", "virtualservice",
        "wasmplugin", "workload",
    )),
)  # fmt: skip

KINDS = [
    ("networking.istio.io/v1", k)
    for k in (
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "Gateway",
        "WorkloadEntry",
        "WorkloadGroup",
    )
] + [
    ("security.istio.io/v1", k)
    for k in ("PeerAuthentication", "RequestAuthentication", "AuthorizationPolicy")
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40),
    st.sampled_from(["*", "/", "0.0.0.0/0", "::/0", "ISTIO_MUTUAL", "STRICT", "ALLOW", "DENY", "80", "-1"]),
)  # fmt: skip
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["hosts", "http", "tcp", "tls", "match", "route", "destination", "host", "subset", "port", "number",
         "weight", "uri", "prefix", "exact", "regex", "headers", "rules", "from", "to", "when", "selector",
         "matchLabels", "subsets", "name", "labels", "trafficPolicy", "portLevelSettings", "servers",
         "endpoints", "address", "ports", "template", "probe", "jwtRules", "mtls", "mode", "action",
         "timeout", "retries", "fault", "mirror", "rewrite", "corsPolicy", "sni_hosts", "protocol"]
    ),
)  # fmt: skip
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=40,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    api, kind = draw(st.sampled_from(KINDS))
    doc: dict[str, Any] = {
        "apiVersion": draw(st.sampled_from([api, "networking.istio.io/v1beta1", "bogus/v0"])),
        "kind": draw(st.sampled_from([kind, "Nope"])),
        "metadata": draw(
            st.fixed_dictionaries({"name": st.text(max_size=20), "namespace": st.text(max_size=10)})
            | st.dictionaries(keys, values, max_size=3)
        ),
        "spec": draw(st.dictionaries(keys, values, max_size=6)),
    }
    return doc


@given(documents())
@example({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {}, "spec": None})
def test_validator_never_raises_on_structured_documents(doc: dict[str, Any]) -> None:
    with fuzzed("config: validate_document", *CONFIG_MODULES):
        res = validate_document(doc, "fuzz.yaml", 1)
    assert res.obj is not None or res.errors


@given(st.text(max_size=2000))
@example("a: &a [x]\nb: *a\n")
@example("[" * 70 + "]" * 70)
@example("!!python/object:os.system ls\n")
@example("a: 1\na: 2\n")
def test_loader_never_raises_on_arbitrary_text(text: str) -> None:
    with fuzzed("config: load_text (text)", *CONFIG_MODULES):
        result = load_text(text, "fuzz.yaml")
    assert result.ok or all(e.file == "fuzz.yaml" for e in result.errors)


@given(documents())
def test_loader_never_raises_on_dumped_documents(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc)
    with fuzzed("config: load_text (yaml)", *CONFIG_MODULES):
        result = load_text(text, "fuzz.yaml")
    assert bool(result.objects) != bool(result.errors) or (not result.objects and not result.errors)
