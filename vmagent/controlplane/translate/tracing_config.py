"""The tracing part of Istio's MeshConfig, checked and turned into plain values.

Fields read (Istio's names and meaning):

* ``extensionProviders``: named tracers. ``zipkin: {service, port, maxTagLength, traceContextOption}``
  and ``opentelemetry: {service, port, maxTagLength, http: {path, timeout, headers}}`` (without ``http``
  the OpenTelemetry exporter speaks OTLP over gRPC). ``service`` is a host name, optionally written
  ``NAMESPACE/HOST`` as in Istio, or an IP address.
* ``defaultProviders.tracing``: the provider used when no Telemetry names one (Istio uses the first).
* ``defaultConfig.tracing``: Istio's ProxyConfig tracing: ``sampling`` (percent, the default when no
  Telemetry sets ``randomSamplingPercentage``; Istio's default is 1), ``customTags``,
  ``maxPathTagLength`` and the legacy ``zipkin.address`` (HOST:PORT), used as a Zipkin provider when
  neither a Telemetry nor ``defaultProviders.tracing`` names one and ``enableTracing`` is not false.

Nothing here configures anything by itself: without a provider no proxy gets a tracer, and the generated
xDS is the same as without these fields.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vmagent.common.errors import ConfigError

ProviderKind = Literal["zipkin", "opentelemetry"]
TRACE_CONTEXT_OPTIONS = ("USE_B3", "USE_B3_WITH_W3C_PROPAGATION")
DEFAULT_SAMPLING = 1.0  # percent: Istio's default (PILOT_TRACE_SAMPLING)
DEFAULT_OTLP_HTTP_PATH = "/v1/traces"
LEGACY_ZIPKIN = "zipkin"  # the name the legacy defaultConfig.tracing.zipkin.address provider gets

# Every kind of MeshConfig extension provider Istio defines; only the tracers below are implemented.
_OTHER_PROVIDER_KINDS = frozenset(
    {
        "envoyExtAuthzHttp", "envoyExtAuthzGrpc", "datadog", "lightstep", "stackdriver", "opencensus",
        "skywalking", "prometheus", "envoyFileAccessLog", "envoyHttpAls", "envoyTcpAls", "envoyOtelAls",
        "sds",
    }
)  # fmt: skip


@dataclass(frozen=True)
class CustomTag:
    """One of Istio's custom tags: ``kind`` is literal (``value``), environment or header (``name``,
    ``default``)."""

    tag: str
    kind: Literal["literal", "environment", "header"]
    value: str = ""  # literal value, or the environment variable / header name
    default: str = ""


@dataclass(frozen=True)
class TracingProvider:
    name: str
    kind: ProviderKind
    host: str  # the service host without a NAMESPACE/ prefix, or an IP address
    port: int
    max_tag_length: int = 0
    trace_context_option: str = "USE_B3"  # zipkin only
    http_path: str | None = None  # opentelemetry: OTLP/HTTP to this path; None: OTLP/gRPC
    http_timeout_s: float = 0.0
    http_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MeshTracing:
    """MeshConfig's tracing settings (see the module docstring)."""

    providers: tuple[TracingProvider, ...] = ()
    default_provider: str = ""  # defaultProviders.tracing[0]; "" when unset
    sampling: float | None = None  # defaultConfig.tracing.sampling
    custom_tags: tuple[CustomTag, ...] = ()
    max_path_tag_length: int = 0
    legacy_provider: str = ""  # LEGACY_ZIPKIN when defaultConfig.tracing.zipkin.address is used

    def provider(self, name: str) -> TracingProvider | None:
        return next((p for p in self.providers if p.name == name), None)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.providers]


def parse_mesh_tracing(mesh_config: Mapping[str, Any], source: str) -> MeshTracing | None:
    """The tracing settings of a MeshConfig document; None when it has none of the tracing fields.

    Bad values raise ConfigError naming ``source`` and the field.
    """
    providers = _providers(mesh_config.get("extensionProviders"), source)
    default_provider = _default_provider(mesh_config.get("defaultProviders"), source)
    default_config = mesh_config.get("defaultConfig")
    if default_config is not None and not isinstance(default_config, Mapping):
        raise ConfigError(f"{source}: defaultConfig: expected a mapping")
    dc: Mapping[str, Any] = default_config or {}
    unknown = sorted(set(dc) - {"tracing"})
    if unknown:
        raise ConfigError(
            f"{source}: defaultConfig.{unknown[0]}: not supported by vmagent (only defaultConfig.tracing)"
        )
    enable = mesh_config.get("enableTracing", True)
    if not isinstance(enable, bool):
        raise ConfigError(f"{source}: enableTracing: expected true or false")
    tracing = dc.get("tracing")
    sampling, tags, max_path, legacy = _proxy_tracing(tracing, source)
    if legacy is not None:
        if any(p.name == LEGACY_ZIPKIN for p in providers):
            raise ConfigError(
                f"{source}: defaultConfig.tracing.zipkin: an extensionProviders entry is already named "
                f"{LEGACY_ZIPKIN!r}"
            )
        providers = (*providers, legacy)
    if default_provider and not any(p.name == default_provider for p in providers):
        known = ", ".join(p.name for p in providers) or "none"
        raise ConfigError(
            f"{source}: defaultProviders.tracing: {default_provider!r} is not a tracing provider of "
            f"extensionProviders (known: {known})"
        )
    if not providers and tracing is None and "enableTracing" not in mesh_config:
        return None
    return MeshTracing(
        providers=providers,
        default_provider=default_provider,
        sampling=sampling,
        custom_tags=tags,
        max_path_tag_length=max_path,
        legacy_provider=LEGACY_ZIPKIN if legacy is not None and enable else "",
    )


def _providers(value: Any, source: str) -> tuple[TracingProvider, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{source}: extensionProviders: expected a list")
    out: list[TracingProvider] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        path = f"extensionProviders[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: {path}: expected a mapping")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: {path}.name: required, a non-empty string")
        if name in seen:
            raise ConfigError(f"{source}: {path}.name: {name!r} is defined twice")
        seen.add(name)
        kinds = [k for k in entry if k != "name"]
        if len(kinds) != 1:
            raise ConfigError(
                f"{source}: {path}: expected exactly one provider kind besides name, got {kinds}"
            )
        kind = kinds[0]
        if kind in _OTHER_PROVIDER_KINDS:
            raise ConfigError(
                f"{source}: {path}.{kind}: not supported by vmagent (tracing providers: zipkin, opentelemetry)"
            )
        if kind not in ("zipkin", "opentelemetry"):
            raise ConfigError(f"{source}: {path}.{kind}: unknown provider kind")
        body = entry[kind]
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: {path}.{kind}: expected a mapping")
        out.append(_provider(name, kind, body, f"{path}.{kind}", source))
    return tuple(out)


def _provider(name: str, kind: str, body: Mapping[str, Any], path: str, source: str) -> TracingProvider:
    allowed = {"service", "port", "maxTagLength"}
    allowed |= {"traceContextOption"} if kind == "zipkin" else {"http"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ConfigError(
            f"{source}: {path}.{unknown[0]}: unknown or unsupported field (known: {', '.join(sorted(allowed))})"
        )
    host = _service(body.get("service"), f"{path}.service", source)
    port = _port(body.get("port"), f"{path}.port", source)
    max_tag = _uint(body.get("maxTagLength", 0), f"{path}.maxTagLength", source)
    if kind == "zipkin":
        option = body.get("traceContextOption", "USE_B3")
        if option not in TRACE_CONTEXT_OPTIONS:
            raise ConfigError(
                f"{source}: {path}.traceContextOption: {option!r} is not {' or '.join(TRACE_CONTEXT_OPTIONS)}"
            )
        return TracingProvider(name, "zipkin", host, port, max_tag, trace_context_option=str(option))
    http = body.get("http")
    if http is None:
        return TracingProvider(name, "opentelemetry", host, port, max_tag)
    if not isinstance(http, Mapping):
        raise ConfigError(f"{source}: {path}.http: expected a mapping")
    unknown = sorted(set(http) - {"path", "timeout", "headers"})
    if unknown:
        raise ConfigError(
            f"{source}: {path}.http.{unknown[0]}: unknown field (known: headers, path, timeout)"
        )
    hpath = http.get("path", DEFAULT_OTLP_HTTP_PATH) or DEFAULT_OTLP_HTTP_PATH
    if not isinstance(hpath, str):
        raise ConfigError(f"{source}: {path}.http.path: expected a string")
    if not hpath.startswith("/"):
        hpath = "/" + hpath
    timeout = _duration(http.get("timeout"), f"{path}.http.timeout", source)
    headers: list[tuple[str, str]] = []
    raw_headers = http.get("headers") or []
    if not isinstance(raw_headers, list):
        raise ConfigError(f"{source}: {path}.http.headers: expected a list of {{name, value}}")
    for j, h in enumerate(raw_headers):
        hp = f"{path}.http.headers[{j}]"
        if not isinstance(h, Mapping) or not isinstance(h.get("name"), str) or not h.get("name"):
            raise ConfigError(f"{source}: {hp}.name: required, a non-empty string")
        if "envoyHeader" in h:
            raise ConfigError(f"{source}: {hp}.envoyHeader: not supported by vmagent (use value)")
        value = h.get("value", "")
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {hp}.value: expected a string")
        headers.append((str(h["name"]), value))
    return TracingProvider(
        name, "opentelemetry", host, port, max_tag,
        http_path=hpath, http_timeout_s=timeout, http_headers=tuple(headers),
    )  # fmt: skip


def _service(value: Any, path: str, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{source}: {path}: required, a host name (HOST or NAMESPACE/HOST) or an IP address"
        )
    host = value.rpartition("/")[2]
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not host or any(not part or len(part) > 63 for part in host.split(".")) or ":" in host:
        raise ConfigError(f"{source}: {path}: {value!r} is not a host name or IP address")
    return host


def _port(value: Any, path: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{source}: {path}: required, a port number 1-65535 (got {value!r})")
    return value


def _uint(value: Any, path: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: {path}: expected a non-negative integer (got {value!r})")
    return value


def _duration(value: Any, path: str, source: str) -> float:
    if value is None:
        return 0.0
    text = str(value)
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            try:
                seconds = float(text[: -len(suffix)]) * scale
            except ValueError:
                break
            if seconds > 0:
                return seconds
            break
    raise ConfigError(f"{source}: {path}: {value!r} is not a positive duration such as 5s or 500ms")


def _default_provider(value: Any, source: str) -> str:
    if not isinstance(value, Mapping):
        return ""  # the metrics part checks the shape of defaultProviders
    names = value.get("tracing")
    if names is None:
        return ""
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{source}: defaultProviders.tracing: expected a list of provider names")
    return str(names[0]) if names else ""


def check_sampling(value: Any, path: str, source: str) -> float:
    """A sampling percentage in [0, 100]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 100.0:
        raise ConfigError(f"{source}: {path}: {value!r} is not a percentage between 0 and 100")
    return float(value)


def _proxy_tracing(
    value: Any, source: str
) -> tuple[float | None, tuple[CustomTag, ...], int, TracingProvider | None]:
    if value is None:
        return None, (), 0, None
    path = "defaultConfig.tracing"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {path}: expected a mapping")
    allowed = {"sampling", "customTags", "maxPathTagLength", "zipkin"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"{source}: {path}.{unknown[0]}: not supported by vmagent (known: {', '.join(sorted(allowed))}; "
            "other tracers go in extensionProviders)"
        )
    sampling = None
    if "sampling" in value:
        sampling = check_sampling(value["sampling"], f"{path}.sampling", source)
    tags = parse_custom_tags(value.get("customTags"), f"{path}.customTags", source)
    max_path = _uint(value.get("maxPathTagLength", 0), f"{path}.maxPathTagLength", source)
    legacy = None
    zipkin = value.get("zipkin")
    if zipkin is not None:
        address = zipkin.get("address") if isinstance(zipkin, Mapping) else None
        if not isinstance(address, str) or ":" not in address:
            raise ConfigError(f"{source}: {path}.zipkin.address: required, HOST:PORT")
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            port_number = int(port)
        except ValueError:
            port_number = 0
        legacy = TracingProvider(
            LEGACY_ZIPKIN,
            "zipkin",
            _service(host, f"{path}.zipkin.address", source),
            _port(port_number, f"{path}.zipkin.address", source),
        )
    return sampling, tags, max_path, legacy


def parse_custom_tags(value: Any, path: str, source: str) -> tuple[CustomTag, ...]:
    """Istio's ``customTags`` map (tag -> one of literal {value}, environment {name, defaultValue},
    header {name, defaultValue}), sorted by tag."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {path}: expected a mapping of tag name to literal/environment/header")
    out: list[CustomTag] = []
    for tag in sorted(value):
        spec = value[tag]
        tp = f"{path}.{tag}"
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ConfigError(f"{source}: {tp}: expected exactly one of literal, environment, header")
        kind, body = next(iter(spec.items()))
        if kind not in ("literal", "environment", "header") or not isinstance(body, Mapping):
            raise ConfigError(f"{source}: {tp}.{kind}: expected literal, environment or header (a mapping)")
        if kind == "literal":
            lit = body.get("value")
            if not isinstance(lit, str):
                raise ConfigError(f"{source}: {tp}.literal.value: required, a string")
            out.append(CustomTag(str(tag), "literal", lit))
            continue
        name = body.get("name")
        default = body.get("defaultValue", "")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: {tp}.{kind}.name: required, a non-empty string")
        if not isinstance(default, str):
            raise ConfigError(f"{source}: {tp}.{kind}.defaultValue: expected a string")
        out.append(CustomTag(str(tag), kind, name, default))
    return tuple(out)
