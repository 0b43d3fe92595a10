"""The agent's and the control plane's Prometheus registries (prometheus_client), checked by promtool.

The control plane's state series are computed from the JSON the HTTP API serves; here that JSON is given
directly, and the event counters are driven through the observer interfaces the ADS status registry and
the certificate issuer call.
"""

from __future__ import annotations

import datetime
from typing import Any

from tests.promtool import promtool_check, sample
from vmagent.agent.request_metrics import LocalWorkload, RequestMetrics
from vmagent.common.metrics import Registry, register_process_metrics
from vmagent.controlplane.metrics import ControlPlaneMetrics
from vmagent.controlplane.xds.snapshot import CLUSTER, LISTENER
from vmagent.controlplane.xds.status import StatusRegistry

NOW = 1_800_000_000.0


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def test_agent_registry_renders_labelled_counters_gauges_and_process_metrics() -> None:
    reg = Registry()
    register_process_metrics(reg)
    acks = reg.counter("vmagent_xds_acks_total", "xDS responses Envoy accepted, by type.", ("type",))
    acks.inc(type="Listener")
    acks.inc(2, type="Cluster")
    live = reg.gauge("vmagent_envoy_live", "1 while Envoy is LIVE.")
    live.set(1)
    assert reg.counter("vmagent_xds_acks_total", "again", ("type",)) is acks  # same name, same metric
    text = reg.render()
    assert sample(text, "vmagent_xds_acks_total", type="Cluster") == 2
    assert sample(text, "vmagent_xds_acks_total", type="Listener") == 1
    assert sample(text, "vmagent_envoy_live") == 1
    rss = sample(text, "vmagent_process_resident_memory_bytes")
    assert rss is not None and rss > 1_000_000
    assert "_created" not in text
    assert reg.value("vmagent_xds_acks_total", type="Cluster") == 2
    promtool_check(text)


def test_a_name_cannot_change_kind() -> None:
    reg = Registry()
    reg.gauge("vmagent_x", "x")
    try:
        reg.counter("vmagent_x", "x")
    except ValueError as exc:
        assert "vmagent_x" in str(exc)
    else:
        raise AssertionError("a counter took the name of a gauge")


def _workloads() -> list[dict[str, Any]]:
    return [
        {
            "namespace": "demo",
            "name": "a",
            "health": "healthy",
            "connected": True,
            "cert_expiry": _iso(NOW + 3600),
        },
        {
            "namespace": "demo",
            "name": "b",
            "health": "healthy",
            "connected": True,
            "cert_expiry": _iso(NOW + 10 * 86400),
        },
        {"namespace": "demo", "name": "c", "health": "unhealthy", "connected": False, "cert_expiry": None},
    ]


def test_control_plane_exposition_has_state_and_events_and_passes_promtool() -> None:
    proxies: list[dict[str, Any]] = [
        {"types": {"CDS": {"state": "synced"}, "LDS": {"state": "nacked"}}},
        {"types": {"CDS": {"state": "synced"}, "LDS": {"state": "synced"}}},
    ]
    m = ControlPlaneMetrics(
        lambda: proxies, _workloads, lambda: ["bad.yaml: x"], lambda: 7, clock=lambda: NOW
    )
    # the ADS status registry reports pushes, ACK latency and NACKs to the metrics object
    clock = iter([NOW, NOW + 0.2, NOW + 0.3, NOW + 1.0, NOW + 4.0, NOW + 5.0])
    status = StatusRegistry(clock=lambda: next(clock), observer=m)
    st = status.open_stream("p", "n", "spiffe://cluster.local/ns/demo/sa/web", "sotw", "peer")
    st.sent(CLUSTER, "v1", "n1")  # at NOW+0.2
    st.ack(CLUSTER, "n1")  # at NOW+0.3: converged in 0.1 s
    st.sent(LISTENER, "v1", "n2")  # NOW+1
    st.nack(LISTENER, "n2", "bad listener")  # NOW+4
    assert st.ack(CLUSTER, "stale-nonce") is False  # an ACK of an old response is not counted
    m.csr_received("join")
    m.issued("join")
    m.csr_received("join")
    m.refused("join", "unauthenticated")
    m.token_refused("used_up")
    m.registration("accepted")

    text = m.render()
    assert sample(text, "pilot_xds") == 2
    assert sample(text, "vmagent_cp_xds_resources", type="LDS", state="nacked") == 1
    assert sample(text, "vmagent_cp_xds_resources", type="CDS", state="synced") == 2
    assert sample(text, "vmagent_cp_workloads", health="healthy", connected="true") == 2
    assert sample(text, "vmagent_cp_workloads", health="unhealthy", connected="false") == 1
    assert sample(text, "vmagent_cp_workload_certs_expiring_24h") == 1
    assert sample(text, "vmagent_cp_workload_cert_expiry_timestamp_seconds", name="a") == NOW + 3600
    assert sample(text, "vmagent_cp_workload_cert_expiry_timestamp_seconds", name="c") is None
    assert sample(text, "vmagent_cp_config_errors") == 1
    assert sample(text, "vmagent_cp_config_objects") == 7
    assert sample(text, "pilot_xds_pushes_total", type="CDS") == 1
    assert sample(text, "pilot_xds_pushes_total", type="LDS") == 1
    assert sample(text, "pilot_total_xds_rejects_total", type="LDS") == 1
    assert sample(text, "pilot_proxy_convergence_time_count", type="CDS") == 1
    took = sample(text, "pilot_proxy_convergence_time_sum", type="CDS")
    assert took is not None and abs(took - 0.1) < 1e-6
    assert sample(text, "pilot_proxy_convergence_time_bucket", type="CDS", le="0.1") == 1
    assert sample(text, "citadel_server_csr_count_total", via="join") == 2
    assert sample(text, "citadel_server_success_cert_issuance_count_total", via="join") == 1
    assert sample(text, "vmagent_cp_cert_issuance_errors_total", via="join", code="unauthenticated") == 1
    assert sample(text, "vmagent_cp_join_token_refusals_total", reason="used_up") == 1
    assert sample(text, "vmagent_cp_registrations_total", result="accepted") == 1
    promtool_check(text)


def test_grafana_dashboard_queries_only_series_that_exist() -> None:
    """Every metric docs/grafana/vmagent-mesh.json queries is exposed by the control plane or the agent."""
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[2] / "docs/grafana/vmagent-mesh.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:vmagent|pilot|citadel|istio)_[a-z0-9_]+)", e)}
    assert used and any(m.startswith("istio_") for m in used)
    one_proxy: list[dict[str, Any]] = [{"types": {"CDS": {"state": "synced"}}}]
    cp = ControlPlaneMetrics(lambda: one_proxy, _workloads, list, lambda: 0, clock=lambda: NOW)
    for event in (cp.pushed, cp.nacked):
        event(CLUSTER)
    cp.acked(CLUSTER, 0.1)
    cp.csr_received("join")
    cp.issued("join")
    cp.refused("join", "unauthenticated")
    cp.token_refused("expired")
    cp.registration("accepted")
    agent = Registry()
    register_process_metrics(agent)
    agent.counter("vmagent_xds_acks_total", "x", ("type",)).inc(type="CDS")
    agent.counter("vmagent_xds_nacks_total", "x", ("type",)).inc(type="CDS")
    agent.gauge("vmagent_envoy_live", "x").set(1)
    agent.counter("vmagent_envoy_restarts_total", "x").inc()
    agent.counter("vmagent_metrics_source_errors_total", "x").inc()  # as the status server registers it
    exposed = {s.name for text in (cp.render(), agent.render()) for f in _families(text) for s in f.samples}
    # The agent's istio_* families (their samples appear with traffic): counters end in _total,
    # histograms' samples in _bucket/_sum/_count.
    requests = RequestMetrics(
        lambda: LocalWorkload("api", "demo", "spiffe://cluster.local/ns/demo/sa/api", "", "")
    )
    for family in requests.collect():
        suffixes = ("_total",) if family.type == "counter" else ("_bucket", "_sum", "_count")
        exposed |= {family.name + sfx for sfx in suffixes}
    assert sorted(used - exposed) == []


def _families(text: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return list(text_string_to_metric_families(text))
