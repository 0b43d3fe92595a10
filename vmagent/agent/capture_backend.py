"""Which iptables the capture rules go through (nf_tables or legacy), and running its save/restore tools.

``auto`` picks the backend that already holds VMAGENT chains; otherwise the one holding more rules
(the way kube-proxy and Istio decide, so our rules land next to the host's own); nft on a tie.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from vmagent.agent.capture_rules import Family, NatState, parse_save
from vmagent.common.errors import VmagentError

log = logging.getLogger(__name__)

BackendName = Literal["nft", "legacy"]
Which = Callable[[str], str | None]


class CommandRunner(Protocol):
    """The shape of vmagent.common.proc.run that capture needs (tests inject fakes or a netns wrapper)."""

    def __call__(
        self,
        cmd: list[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]: ...


_PREFIX: dict[Family, str] = {"ipv4": "iptables", "ipv6": "ip6tables"}


@dataclass(frozen=True)
class Backend:
    """One iptables flavour: the save/restore binaries per family."""

    name: BackendName
    save: dict[Family, str]
    restore: dict[Family, str]

    def restore_cmd(self, family: Family) -> list[str]:
        """The command fed the restore text: ``--noflush`` keeps every rule not named in the input."""
        return [self.restore[family], "--noflush", "--wait=10"]

    def save_cmd(self, family: Family) -> list[str]:
        return [self.save[family]]


def find_backend(name: BackendName, which: Which, runner: CommandRunner) -> Backend | None:
    """The binaries of backend ``name`` (``iptables-nft-save``...), or the plain ``iptables-save``
    family when the distribution ships only that one and ``iptables -V`` says it is ``name``; None
    when not installed."""
    variants = {f: (f"{_PREFIX[f]}-{name}-save", f"{_PREFIX[f]}-{name}-restore") for f in _PREFIX}
    if all(which(save) and which(restore) for save, restore in variants.values()):
        return Backend(name, {f: v[0] for f, v in variants.items()}, {f: v[1] for f, v in variants.items()})
    if which("iptables-save") and which("iptables-restore") and which("iptables"):
        version = runner(["iptables", "-V"], check=False).stdout
        kind: BackendName = "nft" if "nf_tables" in version else "legacy"
        if kind == name:
            return Backend(
                name,
                {f: f"{_PREFIX[f]}-save" for f in _PREFIX},
                {f: f"{_PREFIX[f]}-restore" for f in _PREFIX},
            )
    return None


def _count(backend: Backend, runner: CommandRunner) -> tuple[bool, int]:
    """(holds VMAGENT chains, number of rules) over both families; failures count as empty."""
    ours, rules = False, 0
    for family in backend.save:
        result = runner(backend.save_cmd(family), check=False)
        if result.returncode != 0:
            continue
        ours = ours or parse_save(result.stdout).applied
        rules += sum(1 for line in result.stdout.splitlines() if line.startswith("-A "))
    return ours, rules


def detect_backend(requested: str, which: Which, runner: CommandRunner, source: str) -> Backend:
    """Resolve ``requested`` (auto, nft or legacy) to an installed Backend; VmagentError when impossible."""
    if requested in ("nft", "legacy"):
        found = find_backend(requested, which, runner)  # type: ignore[arg-type]
        if found is None:
            raise VmagentError(
                f"capture backend {requested!r} (from {source}) is not installed: iptables-{requested}-restore "
                f"and ip6tables-{requested}-restore are missing; install iptables or set capture.backend: auto"
            )
        return found
    if requested != "auto":
        raise VmagentError(
            f"{source}: capture.backend: unknown backend {requested!r} (expected auto, nft or legacy)"
        )
    nft = find_backend("nft", which, runner)
    legacy = find_backend("legacy", which, runner)
    if nft is None and legacy is None:
        raise VmagentError(
            "capture needs iptables (iptables-restore, ip6tables-restore); install the iptables package"
        )
    if nft is None or legacy is None:
        only = nft or legacy
        assert only is not None
        return only
    nft_ours, nft_rules = _count(nft, runner)
    legacy_ours, legacy_rules = _count(legacy, runner)
    if nft_ours != legacy_ours:
        chosen = nft if nft_ours else legacy
        log.debug("capture backend %s: it holds the VMAGENT chains", chosen.name)
        return chosen
    chosen = legacy if legacy_rules > nft_rules else nft
    log.debug("capture backend %s (rules: nft %d, legacy %d)", chosen.name, nft_rules, legacy_rules)
    return chosen


def read_state(backend: Backend, family: Family, runner: CommandRunner) -> NatState:
    """Parse the family's current VMAGENT state from ``*-save`` (CommandError when the tool fails)."""
    return parse_save(runner(backend.save_cmd(family)).stdout)
