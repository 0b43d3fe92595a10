"""Istio's host, exportTo and selector rules (vmagent.controlplane.config.hosts) on Istio's documented examples.

The examples are those of Istio's reference pages: VirtualService ``hosts`` (short names are read in the
rule's namespace), ServiceEntry/Gateway/Sidecar hosts (a leading ``*`` wildcard), ``exportTo`` and
``workloadSelector``.
"""

from __future__ import annotations

import pytest

from vmagent.controlplane.config.hosts import (
    config_visible,
    host_covers,
    host_intersection,
    hosts_overlap,
    labels_match,
    qualify_host,
    visible_from,
)
from vmagent.controlplane.model import ConfigObject


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        # "A rule in the default namespace containing a host reviews is interpreted as
        # reviews.default.svc.cluster.local, irrespective of the actual namespace of the reviews service."
        ("reviews", "default", "reviews.default.svc.cluster.local"),
        ("reviews", "foo", "reviews.foo.svc.cluster.local"),
        # Names with a dot, wildcards and IPs are not short names.
        ("reviews.bar.svc.cluster.local", "foo", "reviews.bar.svc.cluster.local"),
        ("bookinfo.com", "default", "bookinfo.com"),
        ("*.bookinfo.com", "default", "*.bookinfo.com"),
        ("*", "default", "*"),
        ("192.168.1.10", "default", "192.168.1.10"),
    ],
)
def test_short_names_are_read_in_the_rules_namespace(host: str, namespace: str, expected: str) -> None:
    assert qualify_host(host, namespace, "cluster.local") == expected


def test_short_names_use_the_mesh_dns_domain() -> None:
    assert qualify_host("db", "prod", "mesh.example") == "db.prod.svc.mesh.example"


@pytest.mark.parametrize(
    ("pattern", "host", "covers"),
    [
        ("*.wikipedia.org", "en.wikipedia.org", True),
        ("*.wikipedia.org", "wikipedia.org", False),  # the wildcard needs a label before the suffix
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "*.shop.example.com", True),  # a narrower wildcard is inside a wider one
        ("*.shop.example.com", "*.example.com", False),
        ("*", "anything.example.com", True),
        ("*", "*.example.com", True),
        ("*.example.com", "*", False),
        ("uk.bookinfo.com", "uk.bookinfo.com", True),
        ("uk.bookinfo.com", "eu.bookinfo.com", False),
        ("uk.bookinfo.com", "*.bookinfo.com", False),  # an exact name does not cover a wildcard
        ("*example.com", "www.example.com", True),  # a star without a dot is still a suffix (Istio)
    ],
)
def test_host_covers_is_directional(pattern: str, host: str, covers: bool) -> None:
    assert host_covers(pattern, host) is covers


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("*.example.com", "shop.example.com", True),
        ("*.example.com", "*.shop.example.com", True),
        ("*", "reviews.default.svc.cluster.local", True),
        ("a.example.com", "b.example.com", False),
        ("*.example.com", "example.org", False),
    ],
)
def test_hosts_overlap_is_symmetric(a: str, b: str, overlap: bool) -> None:
    assert hosts_overlap(a, b) is overlap
    assert hosts_overlap(b, a) is overlap


def test_overlap_is_wider_than_cover() -> None:
    # A DestinationRule for *.shop.example.com does not apply to every *.example.com host, but the two
    # hosts share names: the analyzer must not call the narrower one unknown.
    assert not host_covers("*.shop.example.com", "*.example.com")
    assert hosts_overlap("*.shop.example.com", "*.example.com")


def test_gateway_and_virtual_service_hosts_meet_at_the_more_specific_name() -> None:
    # Gateway server host "*.bookinfo.com" and VirtualService host "uk.bookinfo.com" serve uk.bookinfo.com.
    assert host_intersection("uk.bookinfo.com", "*.bookinfo.com") == "uk.bookinfo.com"
    assert host_intersection("*.bookinfo.com", "uk.bookinfo.com") == "uk.bookinfo.com"
    assert host_intersection("*", "*.bookinfo.com") == "*.bookinfo.com"
    assert host_intersection("UK.Bookinfo.com", "*.bookinfo.com") == "uk.bookinfo.com"
    assert host_intersection("uk.bookinfo.com", "eu.bookinfo.com") is None


@pytest.mark.parametrize(
    ("export_to", "namespace", "visible"),
    [
        ((), "other", True),  # absent: exported to every namespace
        (("*",), "other", True),
        ((".",), "owner", True),  # "." is the owner's namespace only
        ((".",), "other", False),
        (("~",), "owner", False),  # "~" is no namespace at all
        (("other",), "other", True),
        (("other",), "owner", False),
        ((".", "other"), "other", True),
    ],
)
def test_export_to(export_to: tuple[str, ...], namespace: str, visible: bool) -> None:
    assert visible_from(export_to, "owner", namespace) is visible


def test_config_visibility_reads_spec_export_to() -> None:
    rule = ConfigObject("DestinationRule", "networking.istio.io/v1", "owner", "r", {"exportTo": ["."]})
    assert config_visible(rule, "owner")
    assert not config_visible(rule, "other")
    everywhere = ConfigObject("DestinationRule", "networking.istio.io/v1", "owner", "r", {"host": "x"})
    assert config_visible(everywhere, "other")


def test_label_selector() -> None:
    labels = {"app": "reviews", "version": "v1"}
    assert labels_match({"app": "reviews"}, labels)
    assert labels_match({}, labels)  # the empty selector selects everything
    assert not labels_match({"app": "reviews", "version": "v2"}, labels)
    assert not labels_match({"tier": "web"}, labels)
