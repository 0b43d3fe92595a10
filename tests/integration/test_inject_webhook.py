"""The sidecar injection webhook of a real ``vmagent-cp serve`` over real HTTPS, as the API server calls it.

The control plane runs with a kubeconfig for the test API server (tests/kubeapi: a stand-in for
kube-apiserver, which cannot be installed here and which stores webhook configurations without calling
them), so the test plays the API server's part: it takes the ``caBundle`` the control plane wrote into
the MutatingWebhookConfiguration (deploy/kubernetes/base/webhook.yaml, applied as shipped), verifies the
webhook's certificate against it for the Service's DNS name (``vmagent-cp.vmagent-system.svc``, the name
the API server uses for a service reference), and POSTs AdmissionReview v1 bodies shaped as kube-apiserver
sends them (tests/testdata/admission). Bad input gets clear statuses and log lines, and the webhook keeps
serving after each.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from tests.cp_harness import ControlPlaneProcess
from tests.harness import free_port, wait_for
from tests.kubeapi import KubeApiServer
from tests.kubeapi.errors import ApiError
from tests.promtool import sample
from vmagent.common.wire import INJECT_STATUS_ANNOTATION, ROOT_CERT_CONFIGMAP, SIDECAR_CONTAINER

ROOT = Path(__file__).resolve().parents[2]
REVIEW = ROOT / "tests" / "testdata" / "admission" / "pod-create-review.json"
WEBHOOK_CONFIG = ROOT / "deploy" / "kubernetes" / "base" / "webhook.yaml"
SERVICE_NAME = "vmagent-cp.vmagent-system.svc"
IMAGE = "registry.example/vmagent-sidecar:test"


class Webhook:
    def __init__(self, cp: ControlPlaneProcess, api: KubeApiServer, port: int) -> None:
        self.cp, self.api, self.port = cp, api, port
        self.ctx: ssl.SSLContext | None = None

    def config(self) -> dict[str, Any]:
        return self.api.get(
            "admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "vmagent-sidecar-injector"
        )

    def trust_the_ca_bundle(self) -> bytes:
        """Wait for the Lease holder to write caBundle; trust it as the API server would."""

        def bundles() -> set[str] | None:
            found = {str(h["clientConfig"].get("caBundle", "")) for h in self.config()["webhooks"]}
            return found if "" not in found else None

        (bundle,) = wait_for(bundles, timeout=60, what="caBundle in the MutatingWebhookConfiguration")
        pem = base64.b64decode(bundle)
        self.ctx = ssl.create_default_context(cadata=pem.decode())
        return pem

    def connection(self) -> http.client.HTTPSConnection:
        assert self.ctx is not None
        ctx, port = self.ctx, self.port

        class Conn(http.client.HTTPSConnection):
            def connect(self) -> None:  # the Service name, but this machine's loopback
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                self.sock = ctx.wrap_socket(sock, server_hostname=SERVICE_NAME)

        return Conn(SERVICE_NAME, port, timeout=30, context=ctx)

    def post(
        self, body: bytes, content_type: str = "application/json", path: str = "/inject", method: str = "POST"
    ) -> tuple[int, Any]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(raw) if raw else None

    def review(self, namespace: str, mutate: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the pod sent, the AdmissionReview response) for a pod creation in ``namespace``."""
        body = json.loads(REVIEW.read_text().replace("NAMESPACE", namespace))
        if mutate is not None:
            mutate(body["request"]["object"])
        status, answer = self.post(json.dumps(body).encode())
        assert status == 200, answer
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == body["request"]["uid"]
        assert answer["response"]["allowed"] is True
        return body["request"]["object"], answer["response"]

    def metric(self, name: str, **labels: str) -> float:
        import urllib.request

        with urllib.request.urlopen(self.cp.http_url + "/metrics", timeout=10) as r:  # noqa: S310
            text = r.read().decode()
        return sample(text, name, **labels) or 0.0


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Webhook]:
    with KubeApiServer(tmp_path / "kubeapi") as api:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "vmagent-system"}})
        api.create(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "apps", "labels": {"istio-injection": "enabled"}},
            }
        )
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}})
        api.create(yaml.safe_load(WEBHOOK_CONFIG.read_text()))
        port = free_port()
        cp = ControlPlaneProcess(
            tmp_path,
            extra_args=[
                "--kubeconfig", str(api.kubeconfig()), "--lease-namespace", "vmagent-system",
                "--inject-listen", f"127.0.0.1:{port}", "--sidecar-image", IMAGE,
            ],
        )  # fmt: skip
        cp.start()
        try:
            hook = Webhook(cp, api, port)
            root = hook.trust_the_ca_bundle()
            assert root == (cp.state_dir / "mesh-root.pem").read_bytes()
            yield hook
        finally:
            cp.stop()


def applied(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    out: dict[str, Any] = jsonpatch.JsonPatch(ops).apply(copy.deepcopy(pod))
    return out


def test_admission_round_trip_over_https(webhook: Webhook) -> None:
    # A pod in a labelled namespace: patched; the patched pod is a valid Pod with the sidecar.
    pod, response = webhook.review("apps")
    out = applied(pod, response)
    out["metadata"].pop("creationTimestamp")  # null as the API server sends it on create; not schema-valid
    out["metadata"]["name"] = "web-5d8f7c6b9-abcde"
    for version in ("1.27", "1.33"):
        kubernetes_validate.validate(out, version, strict=True)
    (side,) = [c for c in out["spec"]["containers"] if c["name"] == SIDECAR_CONTAINER]
    assert side["image"] == IMAGE
    assert INJECT_STATUS_ANNOTATION in out["metadata"]["annotations"]
    # The named-port readiness probe goes through the agent now.
    assert out["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {
        "path": "/app-health/web/readyz",
        "port": 15020,
        "scheme": "HTTP",
    }
    # The same pod in a namespace without the label: allowed, no patch.
    _, response = webhook.review("plain")
    assert response == {"uid": "3c5d1a8e-2f7b-4e0a-9d61-7b1f0c2e4a90", "allowed": True}
    # An injected pod sent again: nothing to add.
    body = json.loads(REVIEW.read_text().replace("NAMESPACE", "apps"))
    body["request"]["object"] = out
    status, answer = webhook.post(json.dumps(body).encode())
    assert status == 200 and "patch" not in answer["response"]
    assert webhook.metric("sidecar_injection_success_total") == 1
    assert webhook.metric("sidecar_injection_skip_total", reason="namespace_not_enabled") == 1
    assert webhook.metric("sidecar_injection_skip_total", reason="already_injected") == 1
    # The pods' root volume: the Lease holder writes the mesh root into the labelled namespace.
    root = (webhook.cp.state_dir / "mesh-root.pem").read_text()

    def configmap() -> dict[str, Any] | None:
        try:
            return webhook.api.get("v1", "ConfigMap", ROOT_CERT_CONFIGMAP, "apps")
        except ApiError:
            return None

    assert wait_for(configmap, timeout=90, what="ConfigMap istio-ca-root-cert in apps")["data"] == {
        "root-cert.pem": root
    }
    with pytest.raises(ApiError) as missing:
        webhook.api.get("v1", "ConfigMap", ROOT_CERT_CONFIGMAP, "plain")
    assert missing.value.code == 404


def test_bad_input_gets_clear_statuses_and_the_webhook_keeps_serving(webhook: Webhook) -> None:
    good = json.loads(REVIEW.read_text().replace("NAMESPACE", "apps"))
    cases: list[tuple[str, int, str, Any]] = [
        ("not JSON", 400, "body is not JSON", lambda: webhook.post(b'{"apiVersion": ')),
        (
            "a v1beta1 review",
            400,
            "not an AdmissionReview: expected apiVersion admission.k8s.io/v1",
            lambda: webhook.post(json.dumps({**good, "apiVersion": "admission.k8s.io/v1beta1"}).encode()),
        ),
        (
            "no request.uid",
            400,
            "request.uid: missing",
            lambda: webhook.post(json.dumps({**good, "request": {**good["request"], "uid": None}}).encode()),
        ),
        (
            "YAML",
            415,
            "Content-Type 'application/yaml': expected application/json",
            lambda: webhook.post(yaml.safe_dump(good).encode(), content_type="application/yaml"),
        ),
        ("another path", 404, "no such path '/mutate'", lambda: webhook.post(b"{}", path="/mutate")),
        ("GET", 405, "GET not allowed", lambda: webhook.post(b"", method="GET")),
    ]
    for what, status, message, call in cases:
        got, body = call()
        assert (got, what) == (status, what), body
        assert message in body["error"], (what, body)
    # An oversized body is refused from its Content-Length, before it is read.
    conn = webhook.connection()
    conn.putrequest("POST", "/inject")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(64 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"{" + b" " * 65536)
    resp = conn.getresponse()
    assert resp.status == 413 and "over the limit" in json.loads(resp.read())["error"]
    conn.close()
    # A client that does not speak TLS, and one that connects and says nothing, cost nothing lasting.
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as raw:
        raw.sendall(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        try:
            assert raw.recv(100) == b""  # closed after the failed handshake
        except ConnectionResetError:
            pass  # or reset, with the request unread
    idle = socket.create_connection(("127.0.0.1", webhook.port), timeout=10)
    # A pod with fields this webhook does not know (a newer Kubernetes): injected, the fields kept.
    pod, response = webhook.review(
        "apps",
        lambda p: p["spec"].update(futureField={"x": 1}) or p["spec"]["containers"][0].update(newThing=True),
    )
    out = applied(pod, response)
    assert out["spec"]["futureField"] == {"x": 1} and out["spec"]["containers"][0]["newThing"] is True
    assert any(c["name"] == SIDECAR_CONTAINER for c in out["spec"]["containers"])
    # A pod the webhook cannot patch: admitted unchanged, with the reason as a warning for kubectl.
    _, response = webhook.review(
        "apps", lambda p: p["spec"].update(volumes=[{"name": "istio-token", "emptyDir": {}}])
    )
    assert "patch" not in response
    assert response["warnings"] == [
        "vmagent: sidecar not injected: spec.volumes: a volume is already named 'istio-token'"
    ]
    idle.close()
    # Still serving.
    _, response = webhook.review("apps")
    assert response["patchType"] == "JSONPatch"
    assert webhook.metric("sidecar_injection_failure_total", type="bad_request") == len(cases) + 1
    assert webhook.metric("sidecar_injection_failure_total", type="unpatchable") == 1
    log = webhook.cp.log_path.read_text()
    for expected in (
        "refused with 400: body is not JSON",
        "refused with 415: Content-Type 'application/yaml'",
        "refused with 413: body of 67108864 bytes is over the limit",
        "TLS handshake with 127.0.0.1 failed",
        "cannot patch: spec.volumes: a volume is already named 'istio-token'; admitted unchanged",
    ):
        assert expected in log, expected
