"""Telemetry: validated with Istio's rules; ``tracing`` is applied (translate/tracing.py), the other sections
are accepted with a "not supported: ignored" warning."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.validate import DocResult, validate_document


def check(spec: dict[str, Any]) -> DocResult:
    doc = {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "t"},
        "spec": spec,
    }
    return validate_document(doc, "t.yaml", 1)


def test_telemetry_from_istio_docs_is_accepted_with_ignored_warnings_except_tracing() -> None:
    result = check(
        {
            "selector": {"matchLabels": {"app": "reviews"}},
            "tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10.0}],
            "metrics": [
                {
                    "providers": [{"name": "prometheus"}],
                    "overrides": [
                        {
                            "match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"},
                            "tagOverrides": {"request_host": {"operation": "REMOVE"}},
                        }
                    ],
                }
            ],
            "accessLogging": [
                {"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 400"}}
            ],
        }
    )
    assert result.errors == [] and result.obj is not None
    assert [w.path for w in result.warnings] == ["spec.metrics", "spec.accessLogging"]
    assert all("not supported by vmagent: ignored" in w.message for w in result.warnings)


def test_telemetry_tag_override_upsert_needs_value_and_remove_takes_none() -> None:
    overrides = {"a": {"operation": "UPSERT"}, "b": {"operation": "REMOVE", "value": "x"}}
    result = check({"metrics": [{"overrides": [{"tagOverrides": overrides}]}]})
    assert [f"{e.path}: {e.message}" for e in result.errors] == [
        "spec.metrics[0].overrides[0].tagOverrides.a: must have a value when operation is UPSERT",
        "spec.metrics[0].overrides[0].tagOverrides.b: must not have a value when operation is REMOVE",
    ]


def test_telemetry_sampling_metric_and_selector_rules() -> None:
    result = check(
        {
            "selector": {"matchLabels": {"app": "a"}},
            "targetRef": {"kind": "Service", "name": "a"},
            "tracing": [{"randomSamplingPercentage": 101}],
            "metrics": [{"overrides": [{"match": {"metric": "REQUESTS"}}]}],
        }
    )
    messages = [f"{e.path}: {e.message}" for e in result.errors]
    assert (
        "spec.tracing[0].randomSamplingPercentage: 101 is out of range, expected a number between 0 and 100"
        in messages
    )
    assert any(
        m.startswith("spec.metrics[0].overrides[0].match.metric: invalid value 'REQUESTS'") for m in messages
    )
    assert any("only one of 'selector', 'targetRef', 'targetRefs' may be set" in m for m in messages)
