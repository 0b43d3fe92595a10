"""What the webhook adds to a pod: the init container, the sidecar, their volumes, labels and annotations.

The contract with the image and the agent (docs/kubernetes.md, "Sidecar injection"):

* ``istio-init`` runs ``vmagent capture apply --pod`` (root, NET_ADMIN and NET_RAW only, then exits), so
  the sidecar itself needs no capability;
* ``istio-proxy`` runs ``vmagent run --pod`` as the image's non-root user (the proxy user capture exempts);
* both read the pod's labels and annotations from the downward API files under ``/etc/istio/pod``
  (``traffic.sidecar.istio.io/*`` choose the captured ports) and the environment below;
* the ServiceAccount token for the CA (audience ``istio-ca``) is projected at ``POD_TOKEN_PATH`` and the
  mesh root, from the ConfigMap ``istio-ca-root-cert`` of the pod's namespace, at ``POD_ROOT_CERT_PATH``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vmagent.common.constants import (
    AGENT_STATUS_PORT,
    CP_GRPC_PORT,
    CP_MTLS_PORT,
    CP_SERVER_NAME,
    DEFAULT_TRUST_DOMAIN,
    ENVOY_PROMETHEUS_PORT,
    READINESS_PORT,
)
from vmagent.common.image import IMAGE, IMAGE_GID, IMAGE_UID
from vmagent.common.wire import (
    APP_PROBERS_ENV,
    INIT_CONTAINER,
    POD_INFO_DIR,
    POD_ROOT_CERT_DIR,
    POD_TOKEN_AUDIENCE,
    POD_TOKEN_DIR,
    POD_TOKEN_PATH,
    ROOT_CERT_CONFIGMAP,
    SIDECAR_CONTAINER,
)

DEFAULT_SIDECAR_IMAGE = IMAGE  # what `make image` builds (vmagent/common/image.py)
TOKEN_VOLUME = "istio-token"  # noqa: S105 - a volume name
ROOT_CERT_VOLUME = "istiod-ca-cert"
PODINFO_VOLUME = "istio-podinfo"
WORK_VOLUME = "vmagent-run"  # the agent's writable state and sockets (the root filesystem is read-only)
TOKEN_LIFETIME = 43200  # seconds; the kubelet rotates the token at 80% of it
VOLUMES = (WORK_VOLUME, PODINFO_VOLUME, TOKEN_VOLUME, ROOT_CERT_VOLUME)


@dataclass(frozen=True)
class SidecarSettings:
    """What ``vmagent-cp serve`` tells the injector (``--sidecar-image`` and the mesh's settings)."""

    image: str = DEFAULT_SIDECAR_IMAGE
    image_pull_policy: str = "IfNotPresent"
    ca_address: str = f"{CP_SERVER_NAME}:{CP_GRPC_PORT}"  # CreateCertificate with the token
    xds_address: str = f"{CP_SERVER_NAME}:{CP_MTLS_PORT}"  # ADS over mutual TLS
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cluster_domain: str = "cluster.local"
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "100m", "memory": "128Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "2", "memory": "1Gi"})


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def _env(settings: SidecarSettings, probers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("HOST_IP", "status.hostIP"),
        {"name": "CA_ADDR", "value": settings.ca_address},
        {"name": "XDS_ADDR", "value": settings.xds_address},
        {"name": "TRUST_DOMAIN", "value": settings.trust_domain},
        {"name": "CLUSTER_DOMAIN", "value": settings.cluster_domain},
    ]
    if probers:
        env.append(
            {"name": APP_PROBERS_ENV, "value": json.dumps(probers, sort_keys=True, separators=(",", ":"))}
        )
    return env


def _mounts(*, token: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": WORK_VOLUME, "mountPath": "/var/lib/vmagent"},
        {"name": WORK_VOLUME, "mountPath": "/run/vmagent", "subPath": "run"},
        {"name": PODINFO_VOLUME, "mountPath": POD_INFO_DIR, "readOnly": True},
    ]
    if token:
        mounts += [
            {"name": TOKEN_VOLUME, "mountPath": POD_TOKEN_DIR, "readOnly": True},
            {"name": ROOT_CERT_VOLUME, "mountPath": POD_ROOT_CERT_DIR, "readOnly": True},
        ]
    return mounts


def init_container(settings: SidecarSettings) -> dict[str, Any]:
    """``vmagent capture apply --pod``: the pod's iptables, before any application container starts."""
    return {
        "name": INIT_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["vmagent"],
        "args": ["capture", "apply", "--pod"],
        "env": [_field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace")],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
        "volumeMounts": _mounts(token=False),
    }


def sidecar_container(settings: SidecarSettings, probers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``vmagent run --pod``: the agent and Envoy, as the image's non-root user, no capabilities."""
    return {
        "name": SIDECAR_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["vmagent"],
        "args": ["run", "--pod"],
        "env": _env(settings, probers),
        "ports": [
            {"name": "http-envoy-prom", "containerPort": ENVOY_PROMETHEUS_PORT, "protocol": "TCP"},
            {"name": "status-port", "containerPort": AGENT_STATUS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": READINESS_PORT, "scheme": "HTTP"},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "resources": {"requests": dict(settings.requests), "limits": dict(settings.limits)},
        "securityContext": {
            # The image's proxy user, set here so that a pod-level runAsUser cannot make Envoy a user
            # that capture does not exempt (as Istio pins 1337).
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_GID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": _mounts(token=True),
    }


def volumes() -> list[dict[str, Any]]:
    return [
        {"name": WORK_VOLUME, "emptyDir": {}},
        {
            "name": PODINFO_VOLUME,
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]
            },
        },
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": POD_TOKEN_AUDIENCE,
                            "expirationSeconds": TOKEN_LIFETIME,
                            "path": POD_TOKEN_PATH.rsplit("/", 1)[1],
                        }
                    }
                ]
            },
        },
        {"name": ROOT_CERT_VOLUME, "configMap": {"name": ROOT_CERT_CONFIGMAP}},
    ]


def status_annotation() -> str:
    """The value of ``sidecar.istio.io/status``: what was added (Istio's shape)."""
    return json.dumps(
        {
            "initContainers": [INIT_CONTAINER],
            "containers": [SIDECAR_CONTAINER],
            "volumes": list(VOLUMES),
            "imagePullSecrets": None,
            "revision": "default",
        },
        separators=(",", ":"),
    )
