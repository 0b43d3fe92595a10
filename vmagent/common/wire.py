"""The contract between the agent (and its Envoy) and the control plane, written once for both sides.

Both sides import these names; neither spells the strings itself. The well-known ports are in
:mod:`vmagent.common.constants`.

* xDS type URLs (the ``type_url`` of resources and subscriptions);
* Envoy's node id, ``TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN`` (Istio's format), built by the agent's
  bootstrap and parsed by the control plane, and the node metadata keys the control plane reads;
* the SDS secret names the control plane's TLS contexts ask for and the agent's SDS server serves, and
  the name of the static cluster through which Envoy reaches the agent's SDS socket;
* the ADS service, and the gRPC metadata header that carries a join token;
* what the injection webhook puts into a Kubernetes pod and the agent in pod mode reads back (the
  ServiceAccount token's audience and path, the mesh root's path, the rewritten probes' paths and table).
"""

from __future__ import annotations

from dataclasses import dataclass

# -- xDS type URLs -------------------------------------------------------------------------------------
_TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = _TYPE_PREFIX + "envoy.service.runtime.v3.Runtime"
EXTENSION_CONFIG = _TYPE_PREFIX + "envoy.config.core.v3.TypedExtensionConfig"  # ECDS (Wasm filters)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# -- SDS -----------------------------------------------------------------------------------------------
SDS_CLUSTER = "sds-grpc"  # Envoy's static cluster to the agent's SDS socket
SECRET_DEFAULT = "default"  # noqa: S105 - an SDS resource name: the workload's certificate and key
SECRET_ROOTCA = "ROOTCA"  # noqa: S105 - an SDS resource name: the mesh root as validation context

# -- gRPC metadata -------------------------------------------------------------------------------------
AUTHORIZATION_HEADER = "authorization"  # a join token travels as "authorization: Bearer TOKEN"
BEARER_SCHEME = "Bearer"
# Optional: what kind of bearer credential the caller means to present ("join" or "kubernetes"). vmagent's
# agents send it; Istio's agent does not (its token is then classified by its issuer, see
# vmagent/controlplane/ca/credentials.py). A token of the other kind is refused, never reinterpreted.
CREDENTIAL_KIND_HEADER = "x-vmagent-credential"
CREDENTIAL_JOIN = "join"
CREDENTIAL_KUBERNETES = "kubernetes"

# -- Kubernetes pods: written by the injection webhook, read by the agent in pod mode and the CA -----------
# The audience of the projected ServiceAccount token the sidecar presents to the CA (Istio's).
POD_TOKEN_AUDIENCE = "istio-ca"  # noqa: S105 - an audience name, not a secret
POD_TOKEN_DIR = "/var/run/secrets/tokens"  # noqa: S105 - the projected token volume's mount path
POD_TOKEN_PATH = POD_TOKEN_DIR + "/istio-token"
POD_ROOT_CERT_DIR = "/var/run/secrets/istio"  # the mesh root's mount path (ConfigMap ROOT_CERT_CONFIGMAP)
POD_ROOT_CERT_PATH = POD_ROOT_CERT_DIR + "/root-cert.pem"
POD_INFO_DIR = "/etc/istio/pod"  # downward API files "labels" and "annotations" (Istio's podinfo)
ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"  # per namespace, key root-cert.pem (Istio's name)
SIDECAR_CONTAINER = "istio-proxy"  # `vmagent run --pod` (Istio's container names, so habits carry over)
INIT_CONTAINER = "istio-init"  # `vmagent capture apply` with the pod's settings
INJECT_STATUS_ANNOTATION = "sidecar.istio.io/status"  # set on an injected pod: what was added
INJECT_LABEL = "sidecar.istio.io/inject"  # pod label (or annotation) "true" / "false"
NAMESPACE_INJECTION_LABEL = "istio-injection"  # namespace label "enabled" / "disabled"
# Kubelet probes rewritten to the agent's status port: GET /app-health/CONTAINER/livez|readyz|startupz.
APP_HEALTH_PREFIX = "/app-health/"
# The sidecar's environment variable holding the original probes, JSON {path: probe} (Istio's name).
APP_PROBERS_ENV = "ISTIO_KUBE_APP_PROBERS"

# -- Envoy node ----------------------------------------------------------------------------------------
SIDECAR = "sidecar"
ROUTER = "router"  # a gateway proxy
PROXY_TYPES = (SIDECAR, ROUTER)

META_NAMESPACE = "NAMESPACE"
META_WORKLOAD_NAME = "WORKLOAD_NAME"

_NODE_ID_FORMAT = "TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN"


@dataclass(frozen=True)
class NodeId:
    """The parts of an Envoy node id. The IP is as written (the control plane normalizes it)."""

    proxy_type: str  # "sidecar" or "router"
    ip: str
    name: str
    namespace: str
    dns_domain: str

    def __str__(self) -> str:
        return format_node_id(self.proxy_type, self.ip, self.name, self.namespace, self.dns_domain)


def format_node_id(proxy_type: str, ip: str, name: str, namespace: str, dns_domain: str) -> str:
    """Istio's node id ``TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN``."""
    return f"{proxy_type}~{ip}~{name}.{namespace}~{namespace}.svc.{dns_domain}"


def parse_node_id(node_id: str) -> NodeId:
    """The parts of ``node_id``; ValueError (with the expected format) when it is not one."""
    parts = node_id.split("~")
    if len(parts) != 4 or parts[0] not in PROXY_TYPES:
        raise ValueError(f"node id {node_id!r} is not {_NODE_ID_FORMAT}")
    proxy_type, ip, name_ns, suffix = parts
    name, _, namespace = name_ns.rpartition(".")
    if not name:
        raise ValueError(f"node id {node_id!r} is not {_NODE_ID_FORMAT}")
    _, _, dns_domain = suffix.partition(".svc.")
    return NodeId(proxy_type, ip, name, namespace, dns_domain)
