"""Typed, frozen views of validated Istio specs: what the registry and translation read.

A view class per message mirrors the schema in :mod:`vmagent.controlplane.config` field by field
(``tests/unit/test_spec_views.py`` fails when they drift). ``ConfigObject.view`` builds the view of its
spec once (:func:`view_of`) and ``ConfigObject.spec_as(ServiceEntry)`` returns it typed. Adding an Istio
field: the schema (``config/<kind>.py``), the view attribute here, then translation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmagent.controlplane.specs.build import from_spec
from vmagent.controlplane.specs.destinationrule import DestinationRule
from vmagent.controlplane.specs.gateway import Gateway
from vmagent.controlplane.specs.security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from vmagent.controlplane.specs.serviceentry import ServiceEntry
from vmagent.controlplane.specs.sidecar import Sidecar
from vmagent.controlplane.specs.virtualservice import VirtualService
from vmagent.controlplane.specs.workload import WorkloadEntry, WorkloadGroup

VIEWS: dict[str, type[Any]] = {
    "AuthorizationPolicy": AuthorizationPolicy,
    "DestinationRule": DestinationRule,
    "Gateway": Gateway,
    "PeerAuthentication": PeerAuthentication,
    "RequestAuthentication": RequestAuthentication,
    "ServiceEntry": ServiceEntry,
    "Sidecar": Sidecar,
    "VirtualService": VirtualService,
    "WorkloadEntry": WorkloadEntry,
    "WorkloadGroup": WorkloadGroup,
}


def view_of(kind: str, spec: Mapping[str, Any]) -> object:
    """The typed view of a validated ``spec`` of ``kind``; the mapping itself for kinds without one."""
    cls = VIEWS.get(kind)
    return from_spec(cls, spec) if cls is not None else spec


__all__ = [
    "VIEWS",
    "AuthorizationPolicy",
    "DestinationRule",
    "Gateway",
    "PeerAuthentication",
    "RequestAuthentication",
    "ServiceEntry",
    "Sidecar",
    "VirtualService",
    "WorkloadEntry",
    "WorkloadGroup",
    "from_spec",
    "view_of",
]
