"""A pod's capture settings from Istio's annotations, for the init step ``vmagent capture apply
--pod-annotations FILE``.

``FILE`` is the pod's annotations as the downward API writes them (a volume item with ``fieldRef:
metadata.annotations``): one ``key="value"`` line per annotation, the value quoted as a Go string. The
annotations read (Istio's names and meanings):

=================================================  ==========================================
``traffic.sidecar.istio.io/includeInboundPorts``   ``capture.include_inbound_ports`` (``*`` or a list)
``traffic.sidecar.istio.io/excludeInboundPorts``   ``capture.exclude_inbound_ports``
``traffic.sidecar.istio.io/excludeOutboundPorts``  ``capture.exclude_outbound_ports``
``traffic.sidecar.istio.io/includeOutboundIPRanges``  ``capture.include_outbound_cidrs`` (``*`` or a list)
``traffic.sidecar.istio.io/excludeOutboundIPRanges``  ``capture.exclude_outbound_cidrs``
=================================================  ==========================================

Lists are comma-separated. The annotations override the ``capture`` section of the config file (if any);
DNS capture is off in a pod unless that section turns it on (the cluster's DNS answers). A malformed
value is an error naming the annotation and the file; nothing is applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmagent.agent.capture_config import CaptureConfig
from vmagent.common.errors import ConfigError

PREFIX = "traffic.sidecar.istio.io/"
ANNOTATIONS = {
    "includeInboundPorts": "include_inbound_ports",
    "excludeInboundPorts": "exclude_inbound_ports",
    "excludeOutboundPorts": "exclude_outbound_ports",
    "includeOutboundIPRanges": "include_outbound_cidrs",
    "excludeOutboundIPRanges": "exclude_outbound_cidrs",
}
_STAR = {"include_inbound_ports", "include_outbound_cidrs"}
MAX_BYTES = 256 * 1024


def read_annotations(path: Path) -> dict[str, str]:
    """The downward API's annotations file as a dict; ConfigError naming the file and line."""
    try:
        raw = path.read_bytes()[: MAX_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pod's annotations: {exc.strerror}") from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes; not a downward API annotations file")
    out: dict[str, str] = {}
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        try:
            parsed = json.loads(value) if sep else None
        except ValueError:
            parsed = None
        if not sep or not key or not isinstance(parsed, str):
            raise ConfigError(f'{path}:{n}: expected key="value" (a downward API annotations file)')
        out[key] = parsed
    return out


def capture_mapping(annotations: Mapping[str, str], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``capture`` mapping for a pod: ``base`` (the config file's section) with the annotations over it."""
    data: dict[str, Any] = {"dns": False, **(base or {})}
    data["enabled"] = True
    for suffix, field_name in ANNOTATIONS.items():
        value = annotations.get(PREFIX + suffix)
        if value is None:
            continue
        items = [v.strip() for v in value.split(",") if v.strip()]
        data[field_name] = "*" if field_name in _STAR and items == ["*"] else items
    return data


def pod_capture_config(annotations_file: Path, base: Mapping[str, Any] | None) -> CaptureConfig:
    """Validated capture settings; errors name the annotation (``FILE: traffic.sidecar...``)."""
    annotations = read_annotations(annotations_file)
    data = capture_mapping(annotations, base)
    try:
        return CaptureConfig.from_mapping(data, str(annotations_file))
    except ConfigError as exc:
        message = str(exc)
        for suffix, field_name in ANNOTATIONS.items():
            if f"capture.{field_name}" in message:
                message = message.replace(f"capture.{field_name}", PREFIX + suffix)
        raise ConfigError(message) from exc
