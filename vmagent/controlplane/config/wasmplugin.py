"""Schema and checks of extensions.istio.io WasmPlugin: HTTP Wasm filters from a ``file://`` module.

vmagent supports modules from a local ``file://`` path **on the control plane host**: validation reads the
file (it must exist, be a Wasm binary of at most ``MAX_MODULE_BYTES`` and match ``sha256`` when given) and
translation ships its bytes to the proxies inside the xDS configuration (see ``translate/wasm.py`` and
docs/config.md, "WasmPlugin"). ``oci://`` images and ``http(s)://`` downloads are refused as not supported
by vmagent, as is ``type: NETWORK``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from vmagent.controlplane.config.common import POLICY_TARGET_REF, WORKLOAD_SELECTOR, as_dict, check_unique
from vmagent.controlplane.config.types import (
    IGNORED,
    INT32,
    PORT,
    REFUSED,
    STR,
    Ctx,
    Enum,
    F,
    ListOf,
    Msg,
    Str,
    Type,
    child,
    item,
    show,
)

# The module's bytes travel in the proxy's xDS configuration, whose gRPC messages are limited to 4 MiB.
MAX_MODULE_BYTES = 1024 * 1024
WASM_MAGIC = b"\0asm"
PHASES = ("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")
FAIL_STRATEGIES = ("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD")
_SHA256 = re.compile(r"[a-f0-9]{64}")
_NOTE_REMOTE = "vmagent loads modules from file:// paths on the control plane host only"


class AnyJson(Type):
    """A free-form JSON object (``pluginConfig``, a protobuf Struct)."""

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            ctx.error(path, f"expected a mapping, got {show(value)}")


def module_path(url: str) -> str | None:
    """The local path of a ``file://`` url, else None."""
    return url[len("file://") :] if url.startswith("file://") else None


def read_module(path: str) -> bytes:
    """The bytes of the module at ``path`` (raises ValueError saying what is wrong with it).

    Only a regular file is read, without blocking and at most ``MAX_MODULE_BYTES`` + 1 bytes of it, and
    only a Wasm binary is returned: a url cannot make the control plane ship another file's content.
    """
    p = Path(path)
    if not p.is_absolute():
        raise ValueError(f"the module path {path!r} must be absolute (file:///path/to/module.wasm)")
    try:
        if not p.is_file():
            raise ValueError(f"no module file at {path} on the control plane host")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_MODULE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the module {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_MODULE_BYTES:
        raise ValueError(
            f"the module {path} has more than vmagent's limit of {MAX_MODULE_BYTES} bytes "
            "(its bytes are sent to the proxies over xDS)"
        )
    if not data.startswith(WASM_MAGIC):
        raise ValueError(f"{path} is not a WebAssembly binary module (no '\\0asm' header)")
    return data


def _check_url(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    url = value.get("url")
    if not isinstance(url, str) or not url:
        return
    up = child(path, "url")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("", "oci", "http", "https"):
        shown = f"{scheme}://" if scheme else "an OCI image (no scheme defaults to oci://)"
        ctx.error(
            up,
            f"{shown} modules are not supported by vmagent: refused ({_NOTE_REMOTE}; "
            "download the module there and write url: file:///path/to/module.wasm)",
            compat=REFUSED,
        )
        return
    if scheme != "file":
        ctx.error(up, f"url must have schema one of [http, https, file, oci], got {url!r}")
        return
    local = module_path(url) or ""
    try:
        data = read_module(local)
    except ValueError as exc:
        ctx.error(up, str(exc))
        return
    sha = value.get("sha256")
    if isinstance(sha, str) and _SHA256.fullmatch(sha):
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            ctx.error(child(path, "sha256"), f"the module {local} has sha256 {actual}, not {sha}")


def _check_sha256(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    sha = value.get("sha256")
    if isinstance(sha, str) and sha and not _SHA256.fullmatch(sha):
        ctx.error(child(path, "sha256"), f"sha256 must be 64 lower-case hex digits, got {sha!r}")


def _check_ports(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    ports = value.get("ports")
    if isinstance(ports, list):
        numbers = [as_dict(p).get("number") for p in ports]
        check_unique(numbers, child(path, "ports"), ctx, "port")


def _check_env(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    env = value.get("env")
    if not isinstance(env, list):
        return
    check_unique([as_dict(e).get("name") for e in env], child(path, "env"), ctx, "environment variable")
    for i, e in enumerate(env):
        d = as_dict(e)
        if d.get("valueFrom") == "HOST" and d.get("value") is not None:
            ctx.error(
                child(item(child(path, "env"), i), "value"), "value may only be set when valueFrom is INLINE"
            )


def _check_type(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if value.get("type") == "NETWORK":
        ctx.error(
            child(path, "type"),
            "NETWORK Wasm plugins are not supported by vmagent: refused (only HTTP filters are built)",
            compat=REFUSED,
        )


TRAFFIC_SELECTOR = Msg(
    "WasmPlugin.TrafficSelector",
    {
        "mode": Enum("UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"),
        "ports": ListOf(Msg("PortSelector", {"number": F(PORT, required=True)})),
    },
    checks=[_check_ports],
)
ENV_VAR = Msg(
    "EnvVar",
    {
        "name": F(Str(nonempty=True), required=True),
        "valueFrom": Enum("INLINE", "HOST"),
        "value": STR,
    },
)

WASM_PLUGIN = Msg(
    "WasmPlugin",
    {
        "selector": WORKLOAD_SELECTOR,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "url": F(Str(nonempty=True), required=True),
        "sha256": STR,
        # Pull settings concern oci:// and http(s):// modules only, which vmagent refuses.
        "imagePullPolicy": Enum("UNSPECIFIED_POLICY", "IfNotPresent", "Always"),
        "imagePullSecret": Str(nonempty=True),
        "pluginConfig": AnyJson(),
        "pluginName": Str(nonempty=True),
        "phase": Enum(*PHASES),
        "priority": INT32,
        "failStrategy": Enum(*FAIL_STRATEGIES),
        "vmConfig": Msg("VmConfig", {"env": ListOf(ENV_VAR)}, checks=[_check_env]),
        "match": ListOf(TRAFFIC_SELECTOR),
        "type": Enum("UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"),
        "verificationKey": F(
            STR, unsupported=IGNORED, note="module signatures are not checked; pin the module with sha256"
        ),
    },
    oneofs=[("selector", "targetRef", "targetRefs")],
    checks=[_check_sha256, _check_url, _check_type],
)
