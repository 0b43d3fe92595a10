"""Test helper: drop the idempotent-method twins (``failover.idempotent_reset_retry``) from a route list,
leaving one route per match as the VirtualService wrote it. tests/unit/test_translate_failover.py checks
the twins themselves."""

from __future__ import annotations

from typing import Any, TypeVar

from envoy.config.route.v3 import route_components_pb2 as rc

from vmagent.controlplane.translate.failover import IDEMPOTENT_METHODS, RESET

METHODS_REGEX = "|".join(IDEMPOTENT_METHODS)
R = TypeVar("R", rc.Route, dict[str, Any])


def is_twin(route: rc.Route | dict[str, Any]) -> bool:
    if isinstance(route, rc.Route):
        methods = [h.string_match.safe_regex.regex for h in route.match.headers if h.name == ":method"]
        retry_on = route.route.retry_policy.retry_on
    else:
        headers = route.get("match", {}).get("headers", [])
        methods = [h["string_match"]["safe_regex"]["regex"] for h in headers if h["name"] == ":method"]
        retry_on = route.get("route", {}).get("retry_policy", {}).get("retry_on", "")
    return METHODS_REGEX in methods and retry_on.split(",")[-1] == RESET


def one_per_match(routes: list[R]) -> list[R]:
    return [r for r in routes if not is_twin(r)]
