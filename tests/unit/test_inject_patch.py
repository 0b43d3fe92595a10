"""The injection webhook's JSON Patch, applied with ``jsonpatch`` (an RFC 6902 implementation nobody here
wrote) to pods shaped like the Kubernetes documentation's examples (tests/testdata/pods): the result
validates against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict) of the oldest and newest
supported minors, carries the sidecar as specified, and a second review of it changes nothing."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from vmagent.common.constants import AGENT_STATUS_PORT
from vmagent.common.wire import (
    APP_PROBERS_ENV,
    INIT_CONTAINER,
    INJECT_STATUS_ANNOTATION,
    POD_TOKEN_AUDIENCE,
    POD_TOKEN_PATH,
    SIDECAR_CONTAINER,
)
from vmagent.controlplane.inject.patch import injection_patch
from vmagent.controlplane.inject.probes import UnpatchableError
from vmagent.controlplane.inject.review import Injector, MalformedReview
from vmagent.controlplane.inject.template import SidecarSettings

PODS = Path(__file__).resolve().parents[1] / "testdata" / "pods"
K8S_VERSIONS = ("1.27", "1.33")  # as tests/integration/test_deploy_kubernetes.py
SETTINGS = SidecarSettings(image="registry.example/vmagent-sidecar:1.0")
ENABLED = {"istio-injection": "enabled"}


def pod(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((PODS / f"{name}.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def injection(self, result: str, reason: str) -> None:
        self.seen.append((result, reason))


def review_body(
    obj: Any, namespace: str = "default", kind: str = "Pod", operation: str = "CREATE"
) -> dict[str, Any]:
    """An AdmissionReview as kube-apiserver sends it for a pod creation."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": (obj.get("metadata") or {}).get("name", "") if isinstance(obj, dict) else "",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def injector(labels: Mapping[str, str] = ENABLED, observer: Recorder | None = None) -> Injector:
    return Injector(SETTINGS, lambda _ns: labels, observer=observer)


def patched(obj: dict[str, Any], labels: Mapping[str, str] = ENABLED) -> tuple[dict[str, Any], list[Any]]:
    """(the pod after the webhook's patch, the patch), through the AdmissionReview as the API server does."""
    answer = injector(labels).review(review_body(copy.deepcopy(obj)))
    response = answer["response"]
    assert response["allowed"] is True and response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    if "patch" not in response:
        return obj, []
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.JsonPatch(ops).apply(obj), ops


def schema_errors(obj: dict[str, Any], strict: bool = True) -> list[str]:
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=strict)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{version}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}")
    return errors


def container(obj: Mapping[str, Any], name: str, field: str = "containers") -> dict[str, Any]:
    (c,) = [c for c in obj["spec"].get(field) or [] if c["name"] == name]
    assert isinstance(c, dict)
    return c


INJECTED = ["simple", "two-containers", "init-containers", "probes", "existing-volumes"]


@pytest.mark.parametrize("name", sorted(p.stem for p in PODS.glob("*.yaml")))
def test_the_examples_are_valid_pods(name: str) -> None:
    assert schema_errors(pod(name)) == []


@pytest.mark.parametrize("name", INJECTED)
def test_the_patched_pod_validates_and_carries_the_sidecar(name: str) -> None:
    original = pod(name)
    out, ops = patched(original)
    assert ops, "nothing injected"
    assert {op["op"] for op in ops} <= {"add", "replace"}
    assert schema_errors(out) == []
    # What was there is still there, in order; the sidecar comes last, the capture init step after the app's.
    assert [c["name"] for c in out["spec"]["containers"]] == [
        c["name"] for c in original["spec"]["containers"]
    ] + [SIDECAR_CONTAINER]
    assert [c["name"] for c in out["spec"]["initContainers"]] == [
        c["name"] for c in original["spec"].get("initContainers") or []
    ] + [INIT_CONTAINER]
    old_volumes = original["spec"].get("volumes") or []
    assert out["spec"]["volumes"][: len(old_volumes)] == old_volumes
    for key, value in (original["metadata"].get("labels") or {}).items():
        assert out["metadata"]["labels"][key] == value
    for key, value in (original["metadata"].get("annotations") or {}).items():
        assert out["metadata"]["annotations"][key] == value
    assert out["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"
    status = json.loads(out["metadata"]["annotations"][INJECT_STATUS_ANNOTATION])
    assert status["containers"] == [SIDECAR_CONTAINER] and status["initContainers"] == [INIT_CONTAINER]
    assert set(status["volumes"]) <= {v["name"] for v in out["spec"]["volumes"]}
    # The sidecar: the image, non-root without capabilities, the token and the root mounted.
    side = container(out, SIDECAR_CONTAINER)
    assert side["image"] == SETTINGS.image and side["args"] == ["run", "--pod"]
    assert side["securityContext"]["runAsNonRoot"] is True
    assert side["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert side["resources"]["requests"] and side["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in side["volumeMounts"]}
    volumes = {v["name"]: v for v in out["spec"]["volumes"]}
    token_dir, token_file = POD_TOKEN_PATH.rsplit("/", 1)
    (source,) = volumes[mounts[token_dir]]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == POD_TOKEN_AUDIENCE
    assert source["serviceAccountToken"]["path"] == token_file
    assert volumes[mounts["/var/run/secrets/istio"]]["configMap"]["name"] == "istio-ca-root-cert"
    # The init step: capture only, with just the network capabilities.
    init = container(out, INIT_CONTAINER, "initContainers")
    assert init["args"] == ["capture", "apply", "--pod"]
    assert sorted(init["securityContext"]["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]


@pytest.mark.parametrize("name", INJECTED)
def test_an_injected_pod_is_left_alone(name: str) -> None:
    once, _ = patched(pod(name))
    recorder = Recorder()
    answer = injector(observer=recorder).review(review_body(once))
    assert "patch" not in answer["response"] and answer["response"]["allowed"] is True
    assert recorder.seen == [("skipped", "already_injected")]


def test_probes_go_through_the_agent_and_the_originals_go_to_the_sidecar() -> None:
    out, _ = patched(pod("probes"))
    http = container(out, "liveness-http")
    assert http["livenessProbe"] == {
        "httpGet": {"path": "/app-health/liveness-http/livez", "port": AGENT_STATUS_PORT, "scheme": "HTTP"},
        "initialDelaySeconds": 3,
        "periodSeconds": 3,
    }
    assert http["startupProbe"]["httpGet"]["path"] == "/app-health/liveness-http/startupz"
    assert http["startupProbe"]["failureThreshold"] == 30
    goproxy = container(out, "goproxy")
    assert goproxy["readinessProbe"]["httpGet"]["path"] == "/app-health/goproxy/readyz"
    assert goproxy["livenessProbe"] == {"exec": {"command": ["cat", "/tmp/healthy"]}}  # runs in the container
    assert container(out, "etcd")["livenessProbe"]["httpGet"]["path"] == "/app-health/etcd/livez"
    env = {e["name"]: e.get("value") for e in container(out, SIDECAR_CONTAINER)["env"]}
    table = json.loads(env[APP_PROBERS_ENV])
    assert table == {
        "/app-health/liveness-http/livez": {
            "httpGet": {
                "path": "/healthz",
                "port": 8080,
                "httpHeaders": [{"name": "Custom-Header", "value": "Awesome"}],
            }
        },
        # The named port is resolved from the container's ports.
        "/app-health/liveness-http/startupz": {"httpGet": {"path": "/healthz", "port": 8080}},
        "/app-health/goproxy/readyz": {"tcpSocket": {"port": 8081}, "timeoutSeconds": 2},
        "/app-health/etcd/livez": {"grpc": {"port": 2379}},
    }


def test_canonical_labels_follow_the_app_and_version_labels() -> None:
    labels = patched(pod("two-containers"))[0]["metadata"]["labels"]
    assert labels["service.istio.io/canonical-name"] == "two-containers"
    assert labels["service.istio.io/canonical-revision"] == "v2"
    # A ReplicaSet's pod has no name yet: the generateName prefix.
    labels = patched(pod("existing-volumes"))[0]["metadata"]["labels"]
    assert labels["service.istio.io/canonical-name"] == "redis"
    assert labels["service.istio.io/canonical-revision"] == "latest"


@pytest.mark.parametrize(
    ("name", "ns_labels", "reason"),
    [
        ("host-network", ENABLED, "host_network"),
        ("opt-out", ENABLED, "pod_opt_out"),
        ("simple", {}, "namespace_not_enabled"),
        ("simple", {"istio-injection": "disabled"}, "namespace_disabled"),
    ],
)
def test_pods_that_are_not_injected(name: str, ns_labels: dict[str, str], reason: str) -> None:
    recorder = Recorder()
    answer = injector(ns_labels, recorder).review(review_body(pod(name)))
    assert answer["response"] == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}
    assert recorder.seen == [("skipped", reason)]


def test_a_pod_may_opt_in_by_label_in_a_namespace_without_the_label() -> None:
    obj = pod("simple")
    obj["metadata"]["labels"] = {"sidecar.istio.io/inject": "true"}
    out, ops = patched(obj, labels={})
    assert ops and container(out, SIDECAR_CONTAINER)
    # ... but not where the namespace says disabled.
    assert patched(obj, labels={"istio-injection": "disabled"})[1] == []


def test_kube_system_is_never_injected() -> None:
    recorder = Recorder()
    answer = injector(observer=recorder).review(review_body(pod("simple"), namespace="kube-system"))
    assert "patch" not in answer["response"]
    assert recorder.seen == [("skipped", "ignored_namespace")]


def test_unknown_fields_are_kept_and_the_pod_is_injected() -> None:
    """A field from a newer Kubernetes (unknown here) is neither refused nor dropped."""
    obj = pod("simple")
    obj["spec"]["futurePodField"] = {"mode": "x"}
    obj["spec"]["containers"][0]["futureContainerField"] = True
    out, ops = patched(obj)
    assert ops
    assert out["spec"]["futurePodField"] == {"mode": "x"}
    assert out["spec"]["containers"][0]["futureContainerField"] is True
    assert schema_errors(out, strict=False) == []
    assert schema_errors(out) != []  # strict validation does see unknown fields
    del out["spec"]["futurePodField"], out["spec"]["containers"][0]["futureContainerField"]
    assert schema_errors(out) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["spec"].update(containers="nginx"), "spec.containers: expected a list, got str"),
        (lambda p: p["spec"].update(containers=[]), "spec.containers: missing or empty"),
        (
            lambda p: p["spec"].update(volumes=[{"name": "istio-token", "emptyDir": {}}]),
            "spec.volumes: a volume is already named 'istio-token'",
        ),
        (
            lambda p: p["spec"].update(initContainers=[{"name": "istio-init", "image": "x"}]),
            "spec.containers: a container is already named 'istio-init'",
        ),
        (lambda p: p["metadata"].update(labels=["a"]), "metadata.labels: expected an object, got list"),
        (
            lambda p: p["spec"]["containers"][0].update(livenessProbe="http"),
            "spec.containers[0].livenessProbe: expected an object",
        ),
    ],
)
def test_a_pod_that_cannot_be_patched_is_admitted_unchanged_with_a_warning(mutate: Any, message: str) -> None:
    obj = pod("simple")
    mutate(obj)
    with pytest.raises(UnpatchableError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        injection_patch(obj, SETTINGS)
    recorder = Recorder()
    response = injector(observer=recorder).review(review_body(obj))["response"]
    assert response["allowed"] is True and "patch" not in response
    assert response["warnings"] == [f"vmagent: sidecar not injected: {message}"]
    assert recorder.seen == [("failed", "unpatchable")]


def test_a_namespace_that_cannot_be_read_admits_the_pod_unchanged() -> None:
    def broken(_ns: str) -> dict[str, str]:
        raise OSError("connection refused")

    recorder = Recorder()
    response = Injector(SETTINGS, broken, recorder).review(review_body(pod("simple")))["response"]
    assert response["allowed"] is True and "patch" not in response
    assert "namespace default not readable: connection refused" in response["warnings"][0]
    assert recorder.seen == [("failed", "namespace_lookup")]


def test_other_kinds_and_operations_pass_untouched() -> None:
    recorder = Recorder()
    inj = injector(observer=recorder)
    assert "patch" not in inj.review(review_body(pod("simple"), operation="UPDATE"))["response"]
    assert "patch" not in inj.review(review_body({"metadata": {"name": "x"}}, kind="Service"))["response"]
    assert recorder.seen == [("skipped", "not_pod_create")] * 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the body is not a JSON object"),
        (
            {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"},
            "expected apiVersion admission.k8s.io/v1",
        ),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request: missing"),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}},
            "request.uid",
        ),
    ],
)
def test_malformed_reviews_are_refused(body: Any, message: str) -> None:
    with pytest.raises(MalformedReview, match=message):
        injector().review(body)


def test_a_review_without_a_pod_object_is_allowed_with_a_warning() -> None:
    recorder = Recorder()
    body = review_body(pod("simple"))
    body["request"]["object"] = "not a pod"
    response = injector(observer=recorder).review(body)["response"]
    assert response["allowed"] is True and "patch" not in response
    assert recorder.seen == [("failed", "malformed_pod")]
