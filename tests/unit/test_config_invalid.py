"""Invalid Istio YAML: each case asserts the exact messages a user sees (file, object, field path)."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from vmagent.controlplane.config.loader import load_text

FILE = "bad.yaml"
# libyaml (used when PyYAML has it) and the pure-Python parser word this problem differently.
YAML_EOF_PROBLEM = (
    "did not find expected ',' or ']'"
    if yaml.__with_libyaml__
    else "expected ',' or ']', but got '<stream end>'"
)


def errors(text: str) -> list[str]:
    result = load_text(textwrap.dedent(text), FILE)
    assert result.objects == [], "an invalid file must yield no objects"
    return [str(e) for e in result.errors]


def doc(
    kind: str, spec: str, api: str = "networking.istio.io/v1", meta: str = "name: x\n  namespace: demo"
) -> str:
    return f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  {meta}\nspec:\n" + textwrap.indent(
        textwrap.dedent(spec), "  "
    )


VS_ROUTE = """
hosts: [reviews]
http:
- route:
  - destination: {host: reviews}
"""

CASES = [
    (
        "unknown field",
        doc("VirtualService", VS_ROUTE + "  timeuot: 1s\n"),
        [
            "bad.yaml: VirtualService demo/x: spec.http[0].timeuot: unknown field 'timeuot' in HTTPRoute (did you mean 'timeout'?)"
        ],
    ),
    (
        "wrong type",
        doc(
            "VirtualService",
            """
            hosts: [reviews]
            http:
            - route:
              - destination: {host: reviews, subset: v1}
                weight: 90
              - destination: {host: reviews, subset: v2}
                weight: ten
            """,
        ),
        ["bad.yaml: VirtualService demo/x: spec.http[0].route[1].weight: expected an integer, got 'ten'"],
    ),
    (
        "bad enum",
        doc("DestinationRule", "host: reviews\ntrafficPolicy:\n  loadBalancer: {simple: FASTEST}\n"),
        [
            "bad.yaml: DestinationRule demo/x: spec.trafficPolicy.loadBalancer.simple: invalid value 'FASTEST', "
            "expected one of: UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST"
        ],
    ),
    (
        "duplicate port name and number",
        doc(
            "ServiceEntry",
            """
            hosts: [api.example.com]
            ports:
            - {number: 80, name: http, protocol: HTTP}
            - {number: 8080, name: http, protocol: HTTP}
            - {number: 80, name: web, protocol: HTTP}
            """,
        ),
        [
            "bad.yaml: ServiceEntry demo/x: spec.ports[1].name: duplicate port name 'http'",
            "bad.yaml: ServiceEntry demo/x: spec.ports[2].number: duplicate port number 80",
        ],
    ),
    (
        "missing required field",
        doc("DestinationRule", "subsets: [{name: v1}]\n"),
        ["bad.yaml: DestinationRule demo/x: spec.host: required field is missing"],
    ),
    (
        "invalid host",
        doc("ServiceEntry", "hosts: ['api..example.com']\nports: [{number: 80, name: http}]\n"),
        [
            "bad.yaml: ServiceEntry demo/x: spec.hosts[0]: invalid host 'api..example.com': not a valid DNS name"
        ],
    ),
    (
        "bad CIDR",
        doc(
            "ServiceEntry",
            "hosts: [db.example.com]\naddresses: ['10.0.0.0/33']\nports: [{number: 5432, name: tcp}]\n",
        ),
        ["bad.yaml: ServiceEntry demo/x: spec.addresses[0]: invalid CIDR '10.0.0.0/33'"],
    ),
    (
        "bad duration",
        doc("DestinationRule", "host: reviews\ntrafficPolicy:\n  outlierDetection: {interval: 5 minutes}\n"),
        [
            "bad.yaml: DestinationRule demo/x: spec.trafficPolicy.outlierDetection.interval: "
            "invalid duration '5 minutes', expected a duration such as '1.5s' or '100ms'"
        ],
    ),
    (
        "weights not summing to 100",
        doc(
            "VirtualService",
            """
            hosts: [reviews]
            http:
            - route:
              - destination: {host: reviews, subset: v1}
                weight: 80
              - destination: {host: reviews, subset: v2}
                weight: 10
            """,
        ),
        ["bad.yaml: VirtualService demo/x: spec.http[0].route: route weights must sum to 100, got 90"],
    ),
    (
        "HTTPS gateway without tls",
        doc(
            "Gateway",
            "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [shop.example.com]\n",
        ),
        [
            "bad.yaml: Gateway demo/x: spec.servers[0].tls: a server with protocol HTTPS must have tls settings"
        ],
    ),
    (
        "jwtRule without issuer or jwksUri",
        doc(
            "RequestAuthentication",
            "jwtRules:\n- jwks: '{}'\n",
            api="security.istio.io/v1",
        ),
        [
            "bad.yaml: RequestAuthentication demo/x: spec.jwtRules[0].issuer: "
            "issuer or jwksUri must be non-empty string"
        ],
    ),
    (
        "bad apiVersion",
        doc("VirtualService", VS_ROUTE, api="networking.istio.io/v2"),
        [
            "bad.yaml: VirtualService demo/x: apiVersion: unsupported apiVersion 'networking.istio.io/v2' for "
            "VirtualService, expected one of: networking.istio.io/v1alpha3, networking.istio.io/v1beta1, "
            "networking.istio.io/v1"
        ],
    ),
    (
        "security kind with networking apiVersion",
        doc("PeerAuthentication", "mtls: {mode: STRICT}\n", api="networking.istio.io/v1"),
        [
            "bad.yaml: PeerAuthentication demo/x: apiVersion: unsupported apiVersion 'networking.istio.io/v1' for "
            "PeerAuthentication, expected one of: security.istio.io/v1beta1, security.istio.io/v1"
        ],
    ),
    (
        "duplicate object in one file",
        doc("WorkloadEntry", "address: 10.0.0.1\n") + "---\n" + doc("WorkloadEntry", "address: 10.0.0.2\n"),
        [
            "bad.yaml: WorkloadEntry demo/x: metadata.name: duplicate object: WorkloadEntry demo/x is already "
            "defined earlier in the same file"
        ],
    ),
    (
        "unsupported kind",
        doc("ProxyConfig", "concurrency: 2\n"),
        [
            "bad.yaml: ProxyConfig demo/x: kind: unsupported kind 'ProxyConfig' (proxy settings come from the "
            "agent's configuration file), expected one of: "
            "VirtualService, DestinationRule, ServiceEntry, Gateway, WorkloadEntry, WorkloadGroup, Sidecar, "
            "EnvoyFilter, PeerAuthentication, RequestAuthentication, AuthorizationPolicy, Telemetry, WasmPlugin"
        ],
    ),
    (
        "port out of range",
        doc("WorkloadEntry", "address: 10.0.0.1\nports: {http: 70000}\n"),
        [
            "bad.yaml: WorkloadEntry demo/x: spec.ports.http: 70000 is out of range, expected a port number between 1 and 65535"
        ],
    ),
    (
        "percentage out of range",
        doc(
            "VirtualService",
            VS_ROUTE + "  fault:\n    abort: {httpStatus: 503, percentage: {value: 150}}\n",
        ),
        [
            "bad.yaml: VirtualService demo/x: spec.http[0].fault.abort.percentage.value: 150 is out of range, "
            "expected a number between 0 and 100"
        ],
    ),
    (
        "label value not a string",
        doc("DestinationRule", "host: reviews\nsubsets:\n- name: v1\n  labels: {version: 1}\n"),
        ["bad.yaml: DestinationRule demo/x: spec.subsets[0].labels.version: expected a string, got 1"],
    ),
    (
        "missing name and bad namespace",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {namespace: Demo_NS}\nspec: {address: 10.0.0.1}\n",
        [
            "bad.yaml: WorkloadEntry (document 1): metadata.namespace: invalid namespace 'Demo_NS', expected a "
            "DNS-1123 label (lower case, digits, '-')",
            "bad.yaml: WorkloadEntry (document 1): metadata.name: required field is missing",
        ],
    ),
    (
        "oneof violated",
        doc(
            "VirtualService",
            "hosts: [reviews]\nhttp:\n- match:\n  - uri: {exact: /a, prefix: /b}\n  route:\n  - destination: {host: reviews}\n",
        ),
        [
            "bad.yaml: VirtualService demo/x: spec.http[0].match[0].uri: only one of 'exact', 'prefix', 'regex' may be set, got ['exact', 'prefix']"
        ],
    ),
    (
        "static endpoint with a DNS name and an undeclared port",
        doc(
            "ServiceEntry",
            """
            hosts: [db.example.com]
            resolution: STATIC
            ports: [{number: 5432, name: tcp-db, protocol: TCP}]
            endpoints:
            - address: db1.example.com
              ports: {tcp-admin: 5433}
            """,
        ),
        [
            "bad.yaml: ServiceEntry demo/x: spec.endpoints[0].address: address 'db1.example.com' must be an IP "
            "address or unix:// path with resolution STATIC",
            "bad.yaml: ServiceEntry demo/x: spec.endpoints[0].ports['tcp-admin']: port name 'tcp-admin' is not "
            "defined in the ServiceEntry's ports",
        ],
    ),
    (
        "authorization policy ipBlocks and condition",
        doc(
            "AuthorizationPolicy",
            """
            rules:
            - from:
              - source: {ipBlocks: ['300.1.1.1']}
              when:
              - key: request.bogus
                values: [x]
            """,
            api="security.istio.io/v1",
        ),
        [
            "bad.yaml: AuthorizationPolicy demo/x: spec.rules[0].from[0].source.ipBlocks[0]: invalid address "
            "'300.1.1.1', expected an IP address or CIDR",
            "bad.yaml: AuthorizationPolicy demo/x: spec.rules[0].when[0].key: unsupported condition key 'request.bogus'",
        ],
    ),
    (
        "port level mtls without selector",
        doc("PeerAuthentication", "portLevelMtls:\n  8080: {mode: DISABLE}\n", api="security.istio.io/v1"),
        [
            "bad.yaml: PeerAuthentication demo/x: spec.portLevelMtls: requires a workload 'selector' "
            "(not allowed mesh- or namespace-wide)"
        ],
    ),
    (
        "workload group probe without handler",
        doc("WorkloadGroup", "template: {}\nprobe: {periodSeconds: 5}\n"),
        [
            "bad.yaml: WorkloadGroup demo/x: spec.probe: one of 'httpGet', 'tcpSocket', 'exec' or 'grpc' is required",
        ],
    ),
    (
        "YAML syntax error",
        "apiVersion: networking.istio.io/v1\nkind: [VirtualService\n",
        [f"bad.yaml: invalid YAML at line 3, column 1: {YAML_EOF_PROBLEM}"],
    ),
    (
        "duplicate YAML key",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nkind: ServiceEntry\n",
        ["bad.yaml: invalid YAML at line 3, column 1: duplicate key 'kind'"],
    ),
    (
        "document not a mapping",
        "- a\n- b\n",
        ["bad.yaml: document 1: expected a mapping (an Istio object), got a list"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_input_reports_exact_messages(text: str, expected: list[str]) -> None:
    assert errors(text) == expected


def test_all_errors_are_collected_not_just_the_first() -> None:
    text = doc(
        "VirtualService",
        """
        hosts: [reviews]
        http:
        - route:
          - destination: {host: reviews}
            weight: ten
          timeout: 10
          retries: {attempts: -1}
        """,
    )
    text += "---\n" + doc("ServiceEntry", "hosts: ['*']\nlocation: OUTSIDE\n", meta="name: y")
    assert errors(text) == [
        "bad.yaml: VirtualService demo/x: spec.http[0].route[0].weight: expected an integer, got 'ten'",
        "bad.yaml: VirtualService demo/x: spec.http[0].timeout: expected a duration such as '1.5s' or '100ms', got 10",
        "bad.yaml: VirtualService demo/x: spec.http[0].retries.attempts: -1 is out of range, expected an integer "
        "between 0 and 2147483647",
        "bad.yaml: ServiceEntry default/y: spec.location: invalid value 'OUTSIDE', expected one of: MESH_EXTERNAL, "
        "MESH_INTERNAL",
        "bad.yaml: ServiceEntry default/y: spec.hosts[0]: '*' is not allowed in a ServiceEntry",
    ]


def test_deprecated_field_is_accepted_with_a_warning() -> None:
    text = doc(
        "DestinationRule", "host: reviews\ntrafficPolicy:\n  outlierDetection: {consecutiveErrors: 5}\n"
    )
    result = load_text(text, FILE)
    assert result.errors == []
    assert [o.spec["trafficPolicy"]["outlierDetection"] for o in result.objects] == [{"consecutiveErrors": 5}]
    assert [str(w) for w in result.warnings] == [
        "bad.yaml: DestinationRule demo/x: spec.trafficPolicy.outlierDetection.consecutiveErrors: deprecated field: "
        "use 'consecutiveGatewayErrors' or 'consecutive5xxErrors' instead"
    ]


def test_one_invalid_document_invalidates_the_whole_file() -> None:
    text = (
        doc("WorkloadEntry", "address: 10.0.0.1\n")
        + "---\n"
        + doc("WorkloadEntry", "adress: 10.0.0.2\n", meta="name: y")
    )
    result = load_text(text, FILE)
    assert result.objects == []
    assert str(result.errors[0]).startswith("bad.yaml: WorkloadEntry default/y: spec.adress: unknown field")
