"""Security policies between VMs, proven by the traffic they let through or stop.

One lab for the module (prefix ``vmsec``): a control plane, the demo's ``web`` (client) and ``api``
(server) VMs, a plain host ``outside`` (no agent) and an identity provider ``idp`` outside the mesh that
serves a JWKS over HTTP, registered as the MESH_EXTERNAL ServiceEntry ``idp.example.com`` so that api's
Envoy fetches the keys through its cluster. Each test writes its policies into the control plane's
config dir and removes them afterwards; the ``clean`` fixture waits until the mesh is open again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.harness import require_root, require_tool
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for

API = "http://api.demo.svc.cluster.local:8080"
ISSUER = "https://idp.example.com"
INLINE_ISSUER = "inline.example.org"
WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"

IDP_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: idp, namespace: demo}}
spec:
  hosts: [idp.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - address: {address}
"""


class Keys:
    """Two signing keys: ``good`` (published by the idp and inline) and ``rogue`` (published nowhere)."""

    def __init__(self) -> None:
        self.good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.good.public_key()))
        jwk.update({"kid": "good", "alg": "RS256", "use": "sig"})
        return json.dumps({"keys": [jwk]})

    def token(
        self, issuer: str = ISSUER, rogue: bool = False, expires_in: float = 3600, **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {"iss": issuer, "sub": "alice", "iat": now - 60, "exp": int(now + expires_in), **claims}
        key = self.rogue if rogue else self.good
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "good"})


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    workdir = Path(tmp_path_factory.mktemp("vmsec"))
    lab = MeshLab(workdir, prefix="vmsec", subnet="10.230.20.0/24")
    try:
        lab.add_control_plane(DEMO_CONFIG)
        lab.add_vm("web", "demo/web")
        lab.add_vm("api", "demo/api")
        lab.add_host("outside")
        idp = lab.add_host("idp")
        site = workdir / "idp"
        site.mkdir()
        (site / "jwks.json").write_text(keys.jwks())
        server = idp.popen(
            [sys.executable, "-m", "http.server", "80", "--bind", idp.address, "-d", str(site)]
        )
        assert server.poll() is None
        idp.wait_listening(80)
        assert lab.cp is not None
        lab.cp.write_config("15-idp.yaml", IDP_SERVICE.format(address=idp.address))
        lab.wait_reachable(lab.vms["web"], API + "/ready")
        yield lab
    finally:
        lab.close()


def status(vm: VmHost, path: str, *headers: str) -> int:
    """The HTTP status ``vm`` gets for GET ``API+path`` (0 when the connection failed)."""
    args: list[str] = []
    for h in headers:
        args += ["-H", h]
    r = vm.curl(API + path, *args, "-o", "/dev/null")
    return int(r.stdout.strip().rpartition("\n")[2] or 0)


def outside_status(mesh: MeshLab, path: str = "/plain") -> int:
    api = mesh.vms["api"]
    r = mesh.hosts["outside"].run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            f"http://{api.address}:8080{path}",
        ],
        check=False,
    )
    return int(r.stdout or 0)


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


def draining(vm: VmHost) -> int:
    """Listeners and filter chains ``vm``'s Envoy is still draining after an update."""
    total = 0
    for line in vm.envoy_admin("/stats?filter=^listener_manager.total_").splitlines():
        key, _, value = line.partition(": ")
        if key.endswith("_draining") and value.strip().isdigit():
            total += int(value)
    return total


def settle(mesh: MeshLab, what: str, cond: Any, timeout: float = 20) -> None:
    """Wait until the mesh shows the effect of a config change, then until api's Envoy has drained the
    replaced filter chains (connections pooled by web's Envoy may still be served by the old ones)."""
    wait_for(cond, timeout=timeout, interval=0.2, what=what)
    wait_for(lambda: draining(mesh.vms["api"]) == 0, timeout=20, interval=0.2, what="api's Envoy to drain")


@pytest.fixture
def policies(mesh: MeshLab, keys: Keys) -> Iterator[list[Path]]:
    """Files a test writes; removed afterwards, then waits until web (even with a token nobody can
    verify) and outside reach api unhindered."""
    written: list[Path] = []
    yield written
    for p in written:
        p.unlink(missing_ok=True)
    settle(
        mesh,
        "the mesh open again",
        lambda: (
            status(mesh.vms["web"], "/orders", bearer(keys.token(rogue=True))) == 200
            and outside_status(mesh) == 200
        ),
    )


def write(mesh: MeshLab, written: list[Path], name: str, text: str) -> None:
    assert mesh.cp is not None
    written.append(mesh.cp.write_config(name, text))


MESH_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"""

PORT_PERMISSIVE = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api-port, namespace: demo}
spec:
  selector:
    matchLabels: {app: api}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
"""


def test_mesh_wide_strict_refuses_plaintext_and_port_level_reopens(
    mesh: MeshLab, policies: list[Path]
) -> None:
    web = mesh.vms["web"]
    settle(mesh, "plaintext from outside under PERMISSIVE", lambda: outside_status(mesh) == 200)
    write(mesh, policies, "40-strict.yaml", MESH_STRICT)
    settle(mesh, "mesh-wide STRICT to refuse plaintext", lambda: outside_status(mesh) == 0)
    r = web.curl(API + "/strict")
    body, _, code = r.stdout.rpartition("\n")
    assert code == "200", r.stdout
    assert f"URI={WEB_ID}" in json.loads(body)["headers"]["x-forwarded-client-cert"]
    write(mesh, policies, "41-port.yaml", PORT_PERMISSIVE)
    settle(
        mesh,
        "portLevelMtls PERMISSIVE on 8080 to accept plaintext again",
        lambda: outside_status(mesh) == 200,
    )


def request_authn(jwks_inline: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: api-jwt, namespace: demo}}
spec:
  selector:
    matchLabels: {{app: api}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: http://idp.example.com/jwks.json
    outputPayloadToHeader: x-jwt-payload
  - issuer: {INLINE_ISSUER}
    jwks: '{jwks_inline}'
    fromHeaders:
    - {{name: x-token, prefix: "Token "}}
"""


REQUIRE_TOKEN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: demo}
spec:
  selector:
    matchLabels: {app: api}
  rules:
  - from:
    - source: {requestPrincipals: ["*"]}
"""


def test_jwt_valid_bad_signature_expired_and_missing(mesh: MeshLab, keys: Keys, policies: list[Path]) -> None:
    web = mesh.vms["web"]
    write(mesh, policies, "50-jwt.yaml", request_authn(keys.jwks()))
    settle(
        mesh,
        "a token with a bad signature to be refused",
        lambda: status(web, "/orders", bearer(keys.token(rogue=True))) == 401,
    )
    # A valid token from the remote JWKS (fetched by api's Envoy from the idp through its cluster).
    r = web.curl(API + "/orders", "-H", bearer(keys.token(groups=["customer"])))
    body, _, code = r.stdout.rpartition("\n")
    assert code == "200", r.stdout
    payload = json.loads(body)["headers"]["x-jwt-payload"]
    claims = json.loads(jwt.utils.base64url_decode(payload))
    assert claims["iss"] == ISSUER and claims["groups"] == ["customer"]
    assert status(web, "/orders", bearer(keys.token(expires_in=-120))) == 401
    assert status(web, "/orders", bearer(keys.token(issuer="https://unknown.example"))) == 401
    assert status(web, "/orders") == 200, "a request without a token passes RequestAuthentication"
    # The inline issuer, with its own header and prefix.
    assert status(web, "/orders", f"x-token: Token {keys.token(issuer=INLINE_ISSUER)}") == 200
    assert status(web, "/orders", f"x-token: Token {keys.token(issuer=INLINE_ISSUER, rogue=True)}") == 401
    # An AuthorizationPolicy that requires a request principal turns "missing" into 403.
    write(mesh, policies, "51-require.yaml", REQUIRE_TOKEN)
    settle(
        mesh,
        "a missing token to be refused once a principal is required",
        lambda: status(web, "/orders") == 403,
    )
    assert status(web, "/orders", bearer(keys.token())) == 200


CUSTOMERS_ONLY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-customers, namespace: demo}
spec:
  selector:
    matchLabels: {app: api}
  action: ALLOW
  rules:
  - to:
    - operation: {methods: [GET], paths: [/orders, /orders/*]}
    when:
    - key: request.auth.claims[groups]
      values: [customer]
  - to:
    - operation: {paths: [/ready]}
"""


def test_claims_allow_customers_only(mesh: MeshLab, keys: Keys, policies: list[Path]) -> None:
    web = mesh.vms["web"]
    write(mesh, policies, "50-jwt.yaml", request_authn(keys.jwks()))
    write(mesh, policies, "52-customers.yaml", CUSTOMERS_ONLY)
    customer = bearer(keys.token(groups=["customer"]))
    settle(
        mesh,
        "a token of another group to be refused",
        lambda: status(web, "/orders", bearer(keys.token(groups=["staff"]))) == 403,
    )
    assert status(web, "/orders", customer) == 200
    assert status(web, "/orders/17", customer) == 200
    assert status(web, "/orders", bearer(keys.token(groups="customer"))) == 200, "a string claim also matches"
    assert status(web, "/orders") == 403, "no token, no claims"
    assert status(web, "/admin", customer) == 403, "path outside the rule"
    r = web.curl(API + "/orders", "-X", "POST", "-H", customer, "-o", "/dev/null")
    assert r.stdout.strip().endswith("403"), "method outside the rule"
    assert status(web, "/ready") == 200, "the second rule allows /ready to anyone"


ALLOW_ALL = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: demo}
spec:
  selector:
    matchLabels: {app: api}
  action: ALLOW
  rules:
  - {}
"""

DENY_SECRET = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-secret, namespace: demo}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: [/orders/secret*]}
  - from:
    - source: {notPrincipals: [cluster.local/ns/demo/sa/web]}
    when:
    - key: request.headers[x-debug]
      values: ["*"]
"""

ALLOW_NOTHING = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: demo}
spec: {}
"""


def test_deny_overrides_allow_and_empty_allow_denies_all(mesh: MeshLab, policies: list[Path]) -> None:
    web = mesh.vms["web"]
    write(mesh, policies, "53-allow-all.yaml", ALLOW_ALL)
    write(mesh, policies, "54-deny.yaml", DENY_SECRET)
    settle(mesh, "DENY to override the allow-all policy", lambda: status(web, "/orders/secret-plans") == 403)
    assert status(web, "/orders") == 200
    # The header rule denies callers other than web's identity: web passes, plaintext from outside not.
    assert status(web, "/orders", "x-debug: 1") == 200
    assert outside_status(mesh, "/orders") == 200
    r = mesh.hosts["outside"].run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", "-H", "x-debug: 1",
         f"http://{mesh.vms['api'].address}:8080/orders"],
        check=False,
    )  # fmt: skip
    assert r.stdout == "403"
    # With allow-all gone, the only ALLOW policy is one without rules: it allows nothing.
    policies[0].unlink()
    write(mesh, policies, "55-allow-nothing.yaml", ALLOW_NOTHING)
    settle(mesh, "an empty ALLOW policy to deny everything", lambda: status(web, "/orders") == 403)
    assert outside_status(mesh) == 403


PRINCIPALS_ONLY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: demo}
spec:
  selector:
    matchLabels: {app: api}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/demo/sa/web]}
  - from:
    - source: {namespaces: [ops]}
"""


def test_allow_by_peer_principal(mesh: MeshLab, policies: list[Path]) -> None:
    web = mesh.vms["web"]
    write(mesh, policies, "56-principals.yaml", PRINCIPALS_ONLY)
    settle(mesh, "plaintext without a peer identity to be refused", lambda: outside_status(mesh) == 403)
    assert status(web, "/orders") == 200
