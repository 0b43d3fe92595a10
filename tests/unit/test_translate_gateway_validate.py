"""The gateway's generated listeners, routes and TLS contexts pass the real ``envoy --mode validate``."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from tests.unit.test_translate_gateway import GATEWAY, build
from vmagent.agent.envoy_bootstrap import find_envoy_binary
from vmagent.common.proc import run
from vmagent.controlplane.translate import MeshOptions
from vmagent.controlplane.translate.static import static_bootstrap
from vmagent.controlplane.xds.snapshot import LISTENER

EXTRA = """
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: more, namespace: edge}
spec:
  selector: {app: ingress}
  servers:
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 9444, name: tls-term, protocol: TLS}
    hosts: ["db.example.com"]
    tls: {mode: SIMPLE, credentialName: db}
  - port: {number: 9445, name: https-mesh, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL}
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ["x.example.com"]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls, namespace: edge}
spec:
  hosts: ["*.example.com"]
  gateways: ["more"]
  tls:
  - match: [{sniHosts: [api.example.com]}]
    route:
    - destination: {host: api.demo.svc.cluster.local, port: {number: 8080}}
  tcp:
  - route:
    - destination: {host: db.demo.svc.cluster.local}
  http:
  - match: [{uri: {regex: "/a.*"}, headers: {x-user: {exact: bob}}, method: {exact: GET}}]
    rewrite: {uri: /b, authority: api.internal}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 5xx}
    route:
    - destination: {host: api.demo.svc.cluster.local}
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - directResponse: {status: 418, body: {string: teapot}}
"""


def test_gateway_resources_pass_envoy_validate(tmp_path: Path) -> None:
    res = build(GATEWAY + EXTRA)
    assert {"0.0.0.0_8080", "0.0.0.0_8443", "0.0.0.0_9443", "0.0.0.0_9444", "0.0.0.0_9445"} <= set(
        res[LISTENER]
    )
    doc = MessageToDict(static_bootstrap(res, MeshOptions(), sds_socket=str(tmp_path / "sds.sock")))
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(doc, indent=1))
    run([str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"], timeout=60)
