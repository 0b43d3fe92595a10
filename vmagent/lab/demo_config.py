"""The demo mesh's configuration: two VM services, "web" and "api", in namespace "demo"."""

from __future__ import annotations

GROUPS = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: web
  namespace: demo
spec:
  metadata:
    labels:
      app: web
  template:
    serviceAccount: web
    ports:
      http: 8080
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: api
  namespace: demo
spec:
  metadata:
    labels:
      app: api
  template:
    serviceAccount: api
    ports:
      http: 8080
"""

SERVICES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: web
  namespace: demo
spec:
  hosts:
  - web.demo.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: web
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: demo
spec:
  hosts:
  - api.demo.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: api
"""

STRICT_API = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: api-strict
  namespace: demo
spec:
  selector:
    matchLabels:
      app: api
  mtls:
    mode: STRICT
"""

DEMO_CONFIG = {"10-groups.yaml": GROUPS, "20-services.yaml": SERVICES}
