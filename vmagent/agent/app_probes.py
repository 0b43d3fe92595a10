"""The application's own probes, run by the agent when the kubelet asks ``/app-health/...`` (pods).

The injection webhook rewrites each ``httpGet``/``tcpSocket``/``grpc`` probe of an application container
to ``GET /app-health/CONTAINER/livez|readyz|startupz`` on the status port and hands the originals to the
sidecar in ``ISTIO_KUBE_APP_PROBERS`` (JSON ``{path: probe}``, Istio's variable). The status server answers
such a path by running the original probe once, from inside the pod (so capture and mutual TLS do not
stand between the kubelet and the application): 200 when it passes, 503 with the reason when not.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping

from vmagent.agent.probes import GrpcCheck, http_check, parse_probe, tcp_check
from vmagent.common.constants import BYPASS_MARK
from vmagent.common.errors import ConfigError
from vmagent.common.wire import APP_HEALTH_PREFIX, APP_PROBERS_ENV

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


def parse_app_probers(text: str, source: str = APP_PROBERS_ENV) -> dict[str, Check]:
    """``{path: check}`` from the JSON table; ConfigError naming ``source`` and the path at fault."""
    try:
        table = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: not JSON: {exc}") from exc
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: expected an object of path: probe")
    out: dict[str, Check] = {}
    for path, spec in table.items():
        where = f"{source}[{path!r}]"
        if not isinstance(path, str) or not path.startswith(APP_HEALTH_PREFIX):
            raise ConfigError(f"{where}: the path must start with {APP_HEALTH_PREFIX}")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a probe object")
        cfg = parse_probe(spec, where)
        if cfg.http is not None:
            out[path] = http_check(cfg.http, cfg.timeout, BYPASS_MARK)
        elif cfg.tcp is not None:
            out[path] = tcp_check(cfg.tcp, cfg.timeout, BYPASS_MARK)
        elif cfg.grpc is not None:
            out[path] = GrpcCheck(cfg.grpc, cfg.timeout)
        else:
            raise ConfigError(f"{where}: only httpGet, tcpSocket and grpc probes are run by the agent")
    return out


def app_probers_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Check]:
    """The table of ``ISTIO_KUBE_APP_PROBERS`` (empty when unset; logged and empty when invalid, so the
    kubelet's probes fail visibly with 404 rather than the agent refusing to start)."""
    text = environ.get(APP_PROBERS_ENV, "")
    if not text.strip():
        return {}
    try:
        return parse_app_probers(text)
    except ConfigError as exc:
        log.error("application probes not served: %s", exc)
        return {}
