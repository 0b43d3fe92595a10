"""Schema and semantic checks of networking.istio.io Gateway."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.common import (
    TLS_PROTOCOLS,
    as_dict,
    as_list,
    check_port_name,
    check_protocol,
)
from vmagent.controlplane.config.types import (
    LABELS,
    PORT,
    REFUSED,
    STR,
    STRINGS,
    Bool,
    Ctx,
    Enum,
    F,
    Host,
    ListOf,
    Msg,
    child,
    item,
)

_TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")


def _check_server_tls(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    mode = value.get("mode", "SIMPLE")
    if mode not in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") or value.get("httpsRedirect"):
        return
    if value.get("credentialName") or value.get("credentialNames") or value.get("tlsCertificates"):
        return
    for k in ("serverCertificate", "privateKey"):
        if not value.get(k):
            ctx.error(child(path, k), f"required with mode {mode} unless 'credentialName' is set")
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL") and not value.get("caCertificates"):
        ctx.error(child(path, "caCertificates"), f"required with mode {mode} unless 'credentialName' is set")


SERVER_TLS = Msg(
    "ServerTLSSettings",
    {
        "httpsRedirect": Bool(),
        "mode": Enum(
            "PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"
        ),
        "serverCertificate": STR,
        "privateKey": STR,
        "caCertificates": STR,
        "caCrl": F(STR, unsupported=REFUSED, note="certificate revocation lists are not checked"),
        "credentialName": STR,
        "credentialNames": STRINGS,
        "tlsCertificates": ListOf(
            Msg(
                "ServerTLSSettings.TLSCertificate",
                {"serverCertificate": STR, "privateKey": STR, "caCertificates": STR},
            )
        ),
        "subjectAltNames": STRINGS,
        "verifyCertificateSpki": F(
            STRINGS, unsupported=REFUSED, note="client certificate pins are not checked"
        ),
        "verifyCertificateHash": F(
            STRINGS, unsupported=REFUSED, note="client certificate pins are not checked"
        ),
        "minProtocolVersion": Enum(*_TLS_VERSIONS),
        "maxProtocolVersion": Enum(*_TLS_VERSIONS),
        "cipherSuites": STRINGS,
    },
    checks=[_check_server_tls],
)
GATEWAY_PORT = Msg(
    "Port",
    {
        "number": F(PORT, required=True),
        "protocol": F(STR, required=True),
        "name": F(STR, required=True),
        "targetPort": PORT,
    },
    checks=[check_protocol, check_port_name],
)


def _check_server(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    protocol = as_dict(value.get("port")).get("protocol")
    if isinstance(protocol, str) and protocol.upper() in TLS_PROTOCOLS and value.get("tls") is None:
        ctx.error(child(path, "tls"), f"a server with protocol {protocol.upper()} must have tls settings")


SERVER = Msg(
    "Server",
    {
        "port": F(GATEWAY_PORT, required=True),
        "bind": STR,
        "hosts": F(ListOf(Host(namespaced=True), nonempty=True), required=True),
        "tls": SERVER_TLS,
        "defaultEndpoint": F(STR, unsupported=REFUSED, note="traffic is routed by VirtualServices only"),
        "name": STR,
    },
    checks=[_check_server],
)


def _check_gateway(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    names: set[str] = set()
    for i, s in enumerate(as_list(value.get("servers"))):
        name = as_dict(as_dict(s).get("port")).get("name")
        if isinstance(name, str) and name:
            if name in names:
                ctx.error(
                    child(item(child(path, "servers"), i), "port.name"), f"duplicate port name {name!r}"
                )
            names.add(name)


GATEWAY = Msg(
    "Gateway",
    {"servers": F(ListOf(SERVER, nonempty=True), required=True), "selector": LABELS},
    checks=[_check_gateway],
)
