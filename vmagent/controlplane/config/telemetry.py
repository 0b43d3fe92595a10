"""Schema and checks of telemetry.istio.io Telemetry: validated, not applied.

A Telemetry object is checked field by field like Istio does. Its ``tracing`` section configures the
proxies' tracer (``controlplane/translate/tracing.py``; provider names are checked against MeshConfig by
``vmagent-cp validate --mesh-config`` and by the control plane); the other sections are accepted with the
warning that vmagent ignores them, so a migrating user sees the difference (also in
``validate --istio-compat``).
"""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.common import POLICY_TARGET_REF, WORKLOAD_SELECTOR, as_dict
from vmagent.controlplane.config.types import (
    DURATION_1MS,
    IGNORED,
    PERCENT_VALUE,
    STR,
    Bool,
    Ctx,
    Enum,
    F,
    ListOf,
    MapOf,
    Msg,
    Str,
    Type,
    child,
    key_path,
)

_NOTE = "vmagent does not apply Telemetry: proxies keep the agent's metrics, logs and tracing settings"
_MODE = Enum("CLIENT_AND_SERVER", "CLIENT", "SERVER")
_PROVIDERS = ListOf(Msg("ProviderRef", {"name": F(Str(nonempty=True), required=True)}))
METRICS = (
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
)


def _check_tag_overrides(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    for name, op in as_dict(value.get("tagOverrides")).items():
        o = as_dict(op)
        kp = key_path(child(path, "tagOverrides"), name)
        if o.get("operation", "UPSERT") == "UPSERT" and not o.get("value"):
            ctx.error(kp, "must have a value when operation is UPSERT")
        if o.get("operation") == "REMOVE" and o.get("value"):
            ctx.error(kp, "must not have a value when operation is REMOVE")


TAG_OVERRIDE = Msg("MetricsOverrides.TagOverride", {"operation": Enum("UPSERT", "REMOVE"), "value": STR})
METRICS_OVERRIDE = Msg(
    "MetricsOverrides",
    {
        "match": Msg(
            "MetricSelector",
            {"metric": Enum(*METRICS), "customMetric": Str(nonempty=True), "mode": _MODE},
            oneofs=[("metric", "customMetric")],
        ),
        "disabled": Bool(),
        "tagOverrides": MapOf(TAG_OVERRIDE),
    },
    checks=[_check_tag_overrides],
)
_DEFAULTED: dict[str, F | Type] = {"name": F(Str(nonempty=True), required=True), "defaultValue": STR}
CUSTOM_TAG = Msg(
    "Tracing.CustomTag",
    {
        "literal": Msg("Tracing.Literal", {"value": F(STR, required=True)}),
        "environment": Msg("Tracing.Environment", _DEFAULTED),
        "header": Msg("Tracing.RequestHeader", _DEFAULTED),
    },
    oneofs=[("literal", "environment", "header")],
)

TELEMETRY = Msg(
    "Telemetry",
    {
        "selector": WORKLOAD_SELECTOR,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "tracing": F(
            ListOf(
                Msg(
                    "Tracing",
                    {
                        "match": Msg("TracingSelector", {"mode": _MODE}),
                        "providers": _PROVIDERS,
                        "randomSamplingPercentage": PERCENT_VALUE,
                        "disableSpanReporting": Bool(),
                        "customTags": MapOf(CUSTOM_TAG),
                        "useRequestIdForTraceSampling": F(
                            Bool(),
                            unsupported=IGNORED,
                            note="Envoy's default (sampling by x-request-id) applies",
                        ),
                    },
                )
            ),
        ),
        "metrics": F(
            ListOf(
                Msg(
                    "Metrics",
                    {
                        "providers": _PROVIDERS,
                        "overrides": ListOf(METRICS_OVERRIDE),
                        "reportingInterval": DURATION_1MS,
                    },
                )
            ),
            unsupported=IGNORED,
            note=_NOTE,
        ),
        "accessLogging": F(
            ListOf(
                Msg(
                    "AccessLogging",
                    {
                        "match": Msg("AccessLogging.LogSelector", {"mode": _MODE}),
                        "providers": _PROVIDERS,
                        "disabled": Bool(),
                        "filter": Msg(
                            "AccessLogging.Filter", {"expression": F(Str(nonempty=True), required=True)}
                        ),
                    },
                )
            ),
            unsupported=IGNORED,
            note=_NOTE,
        ),
    },
    oneofs=[("selector", "targetRef", "targetRefs")],
)
