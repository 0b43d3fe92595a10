"""Cross-object warnings (istioctl analyze style): dangling hosts, subsets and gateways."""

from __future__ import annotations

import textwrap

from vmagent.controlplane.config.analyze import analyze
from vmagent.controlplane.config.loader import load_text

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: demo}
spec:
  hosts: [reviews.demo.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: demo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: demo}
spec:
  hosts: [reviews, ratings]
  gateways: [mesh, edge]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
    mirror: {host: shadow.example.com}
"""


def test_analyze_warns_about_unknown_hosts_subsets_and_gateways() -> None:
    result = load_text(textwrap.dedent(CONFIG), "mesh.yaml")
    assert result.errors == []
    assert [str(i) for i in analyze(result.objects)] == [
        "mesh.yaml: VirtualService demo/reviews: spec.hosts[1]: host 'ratings.demo.svc.cluster.local' matches no "
        "known service",
        "mesh.yaml: VirtualService demo/reviews: spec.gateways[1]: Gateway demo/edge not found",
        "mesh.yaml: VirtualService demo/reviews: spec.http[0].route[1].destination.subset: subset 'v3' is not "
        "defined by any DestinationRule for host 'reviews.demo.svc.cluster.local'",
        "mesh.yaml: VirtualService demo/reviews: spec.http[0].mirror.host: host 'shadow.example.com' matches no "
        "known service",
    ]


def test_extra_hosts_and_wildcard_service_entries_count_as_known() -> None:
    text = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: ext, namespace: demo}
    spec:
      hosts: ["*.example.com"]
      ports: [{number: 443, name: tls, protocol: TLS}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: vs, namespace: demo}
    spec:
      hosts: [api.example.com, ratings]
      tls:
      - match: [{sniHosts: [api.example.com]}]
        route: [{destination: {host: api.example.com}}]
    """
    result = load_text(textwrap.dedent(text), "x.yaml")
    assert result.errors == []
    assert analyze(result.objects, extra_hosts=["ratings.demo.svc.cluster.local"]) == []
