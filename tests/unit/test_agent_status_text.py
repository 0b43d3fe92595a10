"""`vmagent status` text output: every section is a human line, never raw JSON."""

from __future__ import annotations

from vmagent.cli.agent_status import render_text

RUNNING = {
    "running": True,
    "state": "running",
    "ready": True,
    "identity": {"spiffe_id": "spiffe://cluster.local/ns/demo/sa/web", "serial": "1f", "not_after": "2030"},
    "control_plane": {"address": "10.0.0.1:15013", "connected": True, "registered": True, "last_error": None},
    "xds": {
        "Cluster": {"acked_version": "v3", "acks": 3, "nack": None},
        "Listener": {"acked_version": "", "acks": 0, "nack": "bad filter"},
    },
    "envoy": {
        "pid": 42,
        "live": True,
        "admin": "unix:/run/vmagent/envoy/admin.sock",
        "restarts": 1,
        "last_exit_code": -9,
    },
    "capture": {"enabled": True, "applied": True, "error": None},
    "dns": {"enabled": True, "names": 7, "queries": {"answered": 5, "forwarded": 2}},
}


def test_running_agent_sections_are_human_lines() -> None:
    text = render_text(RUNNING)
    assert "{" not in text and '"' not in text, text
    lines = text.splitlines()
    assert "control plane:  10.0.0.1:15013, connected, registered" in lines
    assert "xds:            Cluster v3, Listener not acked (NACK: bad filter)" in lines
    assert "envoy:          pid 42, live, 1 restarts (last exit code -9)" in lines
    assert "capture:        applied" in lines
    assert "dns:            on, 7 mesh names, queries answered 5, forwarded 2" in lines


def test_stopped_agent_says_not_connected() -> None:
    doc = {
        "running": False,
        "state": "stopped",
        "ready": False,
        "ready_reason": "the agent is not running",
        "identity": {"spiffe_id": "spiffe://x/ns/a/sa/b"},
        "control_plane": {"address": "10.0.0.1:15013", "connected": False},
    }
    text = render_text(doc)
    assert "control plane:  10.0.0.1:15013, NOT CONNECTED" in text.splitlines()
    assert "{" not in text
    failing = dict(RUNNING, control_plane={"address": "a:1", "connected": False, "last_error": "refused"})
    assert "control plane:  a:1, NOT CONNECTED (refused)" in render_text(failing).splitlines()
