"""``python -m tests.kubeapi``: run the test API server as a process (for tests that need one apart).

Prints one JSON line when it serves: url, ca, admin token and the kubeconfig paths it wrote.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tests.kubeapi.server import KubeApiServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.kubeapi",
        description="Test Kubernetes API server (a fake for tests; see tests/kubeapi/__init__.py).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free one, printed)")
    p.add_argument(
        "--cert", type=Path, help="serving certificate PEM (default: generated, signed by the server's CA)"
    )
    p.add_argument("--key", type=Path, help="key of --cert")
    p.add_argument(
        "--cert-ca", type=Path, help="CA certificate that signed --cert (written into the kubeconfigs)"
    )
    p.add_argument("--client-ca", type=Path, help="also accept client certificates signed by this CA")
    p.add_argument(
        "--workdir", type=Path, help="where to write ca.crt and kubeconfigs (default: a new temp dir)"
    )
    p.add_argument("--token", help="also accept this bearer token as the admin user")
    p.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch BOOKMARKs")
    args = p.parse_args(argv)
    if not (bool(args.cert) == bool(args.key) == bool(args.cert_ca)):
        p.error("--cert, --key and --cert-ca go together")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeapi-"))
    server = KubeApiServer(
        workdir,
        args.host,
        args.port,
        cert=args.cert,
        key=args.key,
        cert_ca=args.cert_ca,
        client_ca=args.client_ca,
        bookmark_interval=args.bookmark_interval,
    )
    if args.token:
        server.add_token(args.token, "kubernetes-admin", ("system:masters",))
    info = {
        "url": server.url,
        "ca": str(server.ca_path),
        "kubeconfig": str(server.kubeconfig(auth="cert")),
        "kubeconfig_token": str(server.kubeconfig(auth="token")),
    }
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(json.dumps(info), flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
