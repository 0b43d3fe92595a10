"""Istio's rules for naming and scoping, in one place: hosts, wildcards, ``exportTo`` and label selectors.

The analyzer, the translator and the registry all ask these questions; each answer is written once here.

* A short host (no dot, e.g. ``reviews``) means ``reviews.NAMESPACE.svc.DOMAIN`` where NAMESPACE is the
  namespace of the *rule* that names it, not of the service. Hosts with a dot, ``*`` and wildcards
  (``*.example.com``) stay as written.
* A wildcard is a leading ``*``: ``*`` names every host, ``*.example.com`` (or ``*example.com``) every
  host ending in what follows the star. Two relations matter and they differ:
  :func:`host_covers` is directional (every host the second names, the first names too: a rule's host
  applies to a service), :func:`hosts_overlap` is symmetric (some host is named by both: "does anything
  match?").
* ``exportTo``: absent or ``*`` is everywhere, ``.`` the owner's namespace, ``~`` nowhere, else the
  listed namespaces.
* A label selector selects when every key of it has the same value among the labels (the empty selector
  selects everything).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vmagent.controlplane.model import ConfigObject


def qualify_host(host: str, namespace: str, dns_domain: str) -> str:
    """``host`` as a full name: a short name (no dot) becomes ``NAME.NAMESPACE.svc.DOMAIN``.

    ``namespace`` is the namespace of the object that names the host. Names with a dot, wildcards and
    the empty string stay as written.
    """
    if not host or "." in host or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.{dns_domain}"


def _is_wildcard(host: str) -> bool:
    return host.startswith("*")


def host_covers(pattern: str, host: str) -> bool:
    """Whether every name ``host`` stands for is also named by ``pattern`` (directional).

    ``*.example.com`` covers ``a.example.com`` and ``*.a.example.com`` but not ``example.com``; an exact
    pattern covers only itself; ``*`` covers everything.
    """
    if pattern == host:
        return True
    if not _is_wildcard(pattern):
        return False
    suffix = pattern[1:]
    if _is_wildcard(host):
        return host[1:].endswith(suffix)
    return host.endswith(suffix)


def hosts_overlap(a: str, b: str) -> bool:
    """Whether some name is named by both ``a`` and ``b`` (symmetric; either may be a wildcard)."""
    return host_covers(a, b) or host_covers(b, a)


def host_intersection(a: str, b: str) -> str | None:
    """The names both ``a`` and ``b`` stand for, written as the more specific of the two (lower case).

    None when they share no name. Gateway server hosts meet VirtualService hosts this way.
    """
    a, b = a.lower(), b.lower()
    if host_covers(b, a):
        return a
    if host_covers(a, b):
        return b
    return None


def visible_from(export_to: Iterable[str], owner_namespace: str, namespace: str) -> bool:
    """Istio's ``exportTo``: whether an object of ``owner_namespace`` is visible from ``namespace``."""
    export = [str(x) for x in export_to]
    if not export or "*" in export or namespace in export:
        return True
    return "." in export and owner_namespace == namespace


def export_to_of(obj: ConfigObject) -> list[str]:
    """The object's ``spec.exportTo`` (empty when absent)."""
    value: Any = obj.spec.get("exportTo")
    return [str(x) for x in value] if isinstance(value, list | tuple) else []


def config_visible(obj: ConfigObject, namespace: str) -> bool:
    """Whether ``obj`` (a VirtualService, DestinationRule, ...) is visible from ``namespace``."""
    return visible_from(export_to_of(obj), obj.namespace, namespace)


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` carry every key of ``selector`` with the same value (empty selects all)."""
    return all(labels.get(k) == v for k, v in selector.items())
