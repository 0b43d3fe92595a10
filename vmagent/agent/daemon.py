"""``vmagent run``: the long-running agent that wires identity, rotation, Envoy, capture and health."""

from __future__ import annotations

import datetime
import logging
import signal
import threading
from typing import Any

from vmagent.agent.config import AgentConfig
from vmagent.agent.cpchannel import ControlPlaneChannel
from vmagent.agent.identity import IdentityStore
from vmagent.agent.paths import AgentPaths
from vmagent.agent.rotation import Rotator
from vmagent.common.errors import VmagentError
from vmagent.common.sdnotify import Notifier

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, paths: AgentPaths, notifier: Notifier | None = None) -> None:
        self.paths = paths
        self.config = AgentConfig.load(paths.config_file)
        self.identities = IdentityStore(paths)
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self.started_at = datetime.datetime.now(datetime.UTC)
        ident = self.identities.load()
        if ident.expired():
            raise VmagentError(
                f"the workload certificate expired at {ident.not_after.isoformat()}; "
                "get a new token and run `vmagent join --rejoin`"
            )
        self.channel = ControlPlaneChannel(
            self.config.cp_mtls_address, self.config.server_name, self.identities
        )
        ident_cfg = self.config.section("identity")
        self.rotator = Rotator(
            self.identities,
            self.channel.get,
            key_algorithm=str(ident_cfg.get("key_algorithm", "ec-p256")),
            ttl_seconds=int(ident_cfg.get("cert_ttl_seconds", 0)),
        )

    def start(self) -> None:
        self.rotator.start()
        self.notifier.ready("identity loaded")
        log.info("agent started as %s", self.identities.current().spiffe_id)

    def run_forever(self) -> None:
        interval = self.notifier.watchdog_interval or 5.0
        while not self._stop.wait(interval):
            self.notifier.watchdog()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self.notifier.stopping()
        self.rotator.stop()
        self.channel.close()
        self._stop.set()

    def status(self) -> dict[str, Any]:
        ident = self.identities.current()
        r = self.rotator
        return {
            "identity": {
                "spiffe_id": ident.spiffe_id.uri,
                "serial": f"{ident.serial:x}",
                "not_before": ident.not_before.isoformat(),
                "not_after": ident.not_after.isoformat(),
                "expired": ident.expired(),
                "next_rotation": r.next_rotation.isoformat() if r.next_rotation else None,
                "last_rotation_error": r.last_error,
            },
            "control_plane": {"address": self.config.cp_mtls_address},
            "workload": {"namespace": self.config.namespace, "group": self.config.group},
        }


def run_agent(paths: AgentPaths) -> int:
    agent = Agent(paths)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.start()
    try:
        agent.run_forever()
    finally:
        agent.stop()
    return 0
