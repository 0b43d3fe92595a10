"""Building an auto-registered WorkloadEntry from its WorkloadGroup and what the agent sent.

Pure functions, so the merge rules are easy to test:

* name ``GROUP-ADDRESS`` (:func:`entry_name`);
* spec from ``spec.template`` of the group (ports, serviceAccount, network, locality, weight), the
  agent's non-empty network/locality/weight and its ports overriding;
* labels: template ``labels`` < group ``spec.metadata.labels`` (the group's ``spec.metadata`` is what
  Istio stamps on entries), plus the agent's labels for keys the group does not set. An agent label
  that would change a group label is refused (:class:`LabelConflict`): stricter than Istio, which
  merges the agent's labels last and so lets a VM put itself behind another service's selector
  (docs/security.md). Written both to ``spec.labels`` and to the entry's metadata labels;
* annotations: the group's ``spec.metadata.annotations`` plus ``istio.io/autoRegistrationGroup`` and,
  when the group has a probe, ``proxy.istio.io/health-checks-enabled: "true"`` (Istio's names).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmagent.common.errors import VmagentError
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.specs import WorkloadGroup, from_spec

AUTO_REGISTRATION_ANNOTATION = "istio.io/autoRegistrationGroup"
HEALTH_CHECKS_ANNOTATION = "proxy.istio.io/health-checks-enabled"
WORKLOAD_ENTRY_API_VERSION = "networking.istio.io/v1"
MAX_NAME = 253

_LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LOCALITY = re.compile(r"^[^/]+(/[^/]+){0,2}$")


class RegistrationRefused(VmagentError):
    """The registration is invalid; the message says which field and why (INVALID_ARGUMENT)."""


class LabelConflict(RegistrationRefused):
    """The agent sent a label that the WorkloadGroup sets to another value (PERMISSION_DENIED)."""


@dataclass(frozen=True)
class AutoEntry(ConfigObject):
    """A WorkloadEntry the control plane wrote, with the ``status`` the registry's health check reads."""

    status: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """What an agent asked for, plus the identity its certificate proved."""

    namespace: str
    group: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    network: str = ""
    locality: str = ""
    hostname: str = ""
    weight: int = 0
    spiffe_id: str = ""
    cert_serial: str = ""  # hex
    cert_expiry: float | None = None  # seconds since the epoch


def normalize_address(address: str) -> str:
    """The canonical text of an IP address (IPv6 compressed, lower case); RegistrationRefused otherwise."""
    text = address.strip()
    if "%" in text:
        raise RegistrationRefused(
            f"address {address!r}: zone ids are not allowed; register a routable address"
        )
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise RegistrationRefused(f"address {address!r} is not an IPv4 or IPv6 address") from exc
    if ip.is_unspecified or ip.is_multicast:
        raise RegistrationRefused(f"address {address!r} cannot be a workload address")
    return str(ip)


def entry_name(group: str, address: str) -> str:
    """``GROUP-ADDRESS``, a valid DNS-1123 subdomain for IPv4 and IPv6 addresses alike.

    IPv6 colons become ``-`` (``2001:db8::1`` -> ``GROUP-2001-db8--1``). A compressed address ending in
    ``::`` is written with an explicit trailing ``0`` first (``2001:db8::`` is ``2001:db8::0``) so the
    name ends with an alphanumeric. Names longer than 253 characters keep their last 253 (the address
    part is the distinguishing one), as Istio does.
    """
    addr = normalize_address(address)
    if ":" in addr:
        if addr.endswith(":"):
            addr += "0"
        addr = addr.replace(":", "-")
    name = f"{group}-{addr}"
    if len(name) > MAX_NAME:
        name = name[-MAX_NAME:].lstrip("-.")
    return name


def _validate(reg: Registration) -> None:
    for k, v in reg.labels.items():
        if not _LABEL_NAME.match(k):
            raise RegistrationRefused(f"label name {k!r} is not a valid label key")
        if not _LABEL_VALUE.match(v):
            raise RegistrationRefused(f"label {k!r}: value {v!r} is not a valid label value")
    for name, port in reg.ports.items():
        if not _PORT_NAME.match(name):
            raise RegistrationRefused(f"port name {name!r} is not a DNS-1123 label")
        if not 1 <= port <= 65535:
            raise RegistrationRefused(f"port {name!r}: {port} is out of range 1-65535")
    if reg.locality and not _LOCALITY.match(reg.locality):
        raise RegistrationRefused(f"locality {reg.locality!r} is not REGION[/ZONE[/SUBZONE]]")
    if len(reg.hostname) > 253:
        raise RegistrationRefused("hostname is longer than 253 characters")


@dataclass(frozen=True)
class EntryParts:
    """The parts of an entry derived at registration (stored as is)."""

    name: str
    address: str
    spec: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]
    has_probe: bool


def build_entry(group: Mapping[str, Any], reg: Registration) -> EntryParts:
    """The WorkloadEntry for ``reg`` from ``group`` (a WorkloadGroup object: metadata, spec)."""
    _validate(reg)
    address = normalize_address(reg.address)
    spec_in = from_spec(WorkloadGroup, group.get("spec") or {})
    template, meta = spec_in.template, spec_in.metadata
    labels = dict(template.labels)
    labels.update(meta.labels)
    for k, v in sorted(reg.labels.items()):
        if k in labels and labels[k] != v:
            raise LabelConflict(
                f"label {k}={v} conflicts with {k}={labels[k]} of WorkloadGroup {reg.namespace}/{reg.group}: "
                "an agent may add labels, never change the group's (they decide which services and "
                "policies select the workload)"
            )
    labels.update(reg.labels)
    ports = dict(template.ports)
    ports.update(reg.ports)
    spec: dict[str, Any] = {"address": address}
    if ports:
        spec["ports"] = ports
    if labels:
        spec["labels"] = dict(labels)
    if template.service_account:
        spec["serviceAccount"] = template.service_account
    network = reg.network or template.network
    if network:
        spec["network"] = network
    locality = reg.locality or template.locality
    if locality:
        spec["locality"] = locality
    weight = reg.weight or template.weight
    if weight:
        spec["weight"] = weight
    has_probe = spec_in.probe is not None
    annotations = dict(meta.annotations)
    annotations[AUTO_REGISTRATION_ANNOTATION] = reg.group
    if has_probe:
        annotations[HEALTH_CHECKS_ANNOTATION] = "true"
    return EntryParts(entry_name(reg.group, address), address, spec, labels, annotations, has_probe)
