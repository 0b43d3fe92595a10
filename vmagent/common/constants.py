"""Well-known ports and marks (the same numbers as Istio where Istio has one, so habits carry over)."""

from __future__ import annotations

ENVOY_ADMIN_PORT = 15000
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
CP_HTTP_PORT = 15014
CP_GRPC_PORT = 15012
CP_MTLS_PORT = 15013
INJECT_PORT = 15017  # the control plane's sidecar injection webhook (HTTPS), as istiod's
AGENT_STATUS_PORT = 15020
READINESS_PORT = 15021
DNS_PROXY_PORT = 15053
ENVOY_PROMETHEUS_PORT = 15090

PROXY_USER = "vmagent-proxy"
METADATA_ADDRESS = "169.254.169.254"
SSH_PORT = 22

# Packets the agent itself sends (its DNS forwarder, health probes) carry this fwmark; capture skips them.
BYPASS_MARK = 0x539

# Name the control plane's server certificate carries; the agent checks it (trust is pinned to the mesh root).
CP_SERVER_NAME = "vmagent-cp.vmagent-system.svc"
DEFAULT_TRUST_DOMAIN = "cluster.local"
# Envoy's static cluster to the agent's AccessLogService (request metrics), named in translated listeners.
ALS_CLUSTER = "vmagent-als"
