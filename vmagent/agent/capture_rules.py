"""Capture rules as data: the wanted ``VMAGENT_*`` nat-table state, the state parsed from iptables-save,
and the iptables-restore transaction (``--noflush``) that turns one into the other atomically.

Pure functions only; running commands is capture_backend's job.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal

from vmagent.agent.capture_config import CaptureConfig, IpNetwork, ProxyIds
from vmagent.common import constants

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

CHAIN_PREFIX = "VMAGENT_"
INBOUND = "VMAGENT_INBOUND"
IN_REDIRECT = "VMAGENT_IN_REDIRECT"
OUTPUT = "VMAGENT_OUTPUT"
REDIRECT = "VMAGENT_REDIRECT"
DNS = "VMAGENT_DNS"
# An empty chain that records "apply created the nat table", so clean can delete the table again.
TABLE_MARKER = "VMAGENT_CREATED_TABLE"
JUMP_COMMENT = "vmagent capture"

# Inbound ports never captured: SSH and the agent's/Envoy's own status ports (reachable directly).
DEFAULT_INBOUND_EXCLUDES: tuple[int, ...] = (
    constants.SSH_PORT,
    constants.AGENT_STATUS_PORT,
    constants.READINESS_PORT,
    constants.ENVOY_PROMETHEUS_PORT,
)


@dataclass(frozen=True)
class FamilyFacts:
    """Addresses that differ between IPv4 and IPv6."""

    loopback: str
    passthrough_source: str  # Envoy's inbound passthrough binds this source (Istio's 127.0.0.6 convention)
    metadata: tuple[str, ...]


FACTS: dict[Family, FamilyFacts] = {
    "ipv4": FamilyFacts("127.0.0.0/8", "127.0.0.6/32", (f"{constants.METADATA_ADDRESS}/32",)),
    "ipv6": FamilyFacts("::1/128", "::6/128", ("fd00:ec2::254/128",)),
}


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that jumps to a VMAGENT chain; ``position`` counts from 1."""

    chain: str
    position: int
    spec: str


@dataclass
class NatState:
    """The VMAGENT part of one family's nat table.

    ``chains`` maps each VMAGENT chain to its rules (the text after ``-A CHAIN``), in order;
    ``jumps`` are the rules elsewhere that reference VMAGENT chains; ``table_exists`` says whether the
    nat table is listed at all by iptables-save; ``table_empty`` whether it holds nothing but empty
    built-in chains with ACCEPT policies.
    """

    chains: dict[str, list[str]] = field(default_factory=dict)
    jumps: list[Jump] = field(default_factory=list)
    table_exists: bool = False
    table_empty: bool = True

    @property
    def applied(self) -> bool:
        """True when any VMAGENT chain or jump is present."""
        return bool(self.chains or self.jumps)

    @property
    def created_table(self) -> bool:
        """True when an earlier apply recorded that it created the nat table."""
        return TABLE_MARKER in self.chains


def _targets_vmagent(tokens: list[str]) -> bool:
    return any(
        tok in ("-j", "-g", "--jump", "--goto")
        and i + 1 < len(tokens)
        and tokens[i + 1].startswith(CHAIN_PREFIX)
        for i, tok in enumerate(tokens)
    )


def parse_save(text: str) -> NatState:
    """Extract the VMAGENT state of the nat table from ``iptables-save`` output (all tables or ``-t nat``)."""
    state = NatState()
    in_nat = False
    positions: dict[str, int] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_nat = line == "*nat"
            state.table_exists = state.table_exists or in_nat
            continue
        if not in_nat or line == "COMMIT":
            continue
        if line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            if name.startswith(CHAIN_PREFIX):
                state.chains.setdefault(name, [])
            if rest.split(" ", 1)[0] != "ACCEPT":  # a user chain ("-") or a non-default policy
                state.table_empty = False
            continue
        if line.startswith("-A "):
            state.table_empty = False
            _, chain, spec = line.split(" ", 2) if line.count(" ") >= 2 else (line, line[3:], "")
            if chain.startswith(CHAIN_PREFIX):
                state.chains.setdefault(chain, []).append(spec)
                continue
            positions[chain] = positions.get(chain, 0) + 1
            if _targets_vmagent(shlex.split(spec)):
                state.jumps.append(Jump(chain, positions[chain], spec))
    return state


def _ports_rules(ports: tuple[int, ...], target: str, proto: str = "tcp") -> list[str]:
    return [f"-p {proto} --dport {port} -j {target}" for port in ports]


def _family_nets(nets: tuple[IpNetwork, ...], family: Family) -> list[IpNetwork]:
    version = 4 if family == "ipv4" else 6
    return [n for n in nets if n.version == version]


def desired_state(config: CaptureConfig, ids: ProxyIds, family: Family, mark_table: bool = False) -> NatState:
    """The VMAGENT chains and jumps that ``config`` asks for in ``family``'s nat table.

    ``mark_table`` adds the TABLE_MARKER chain (apply found no nat table, so clean may delete it).
    """
    facts = FACTS[family]
    chains: dict[str, list[str]] = {}
    jumps: list[Jump] = []
    comment = f'-m comment --comment "{JUMP_COMMENT}"'

    if config.inbound:
        inbound = _ports_rules(
            tuple(dict.fromkeys(DEFAULT_INBOUND_EXCLUDES + config.exclude_inbound_ports)), "RETURN"
        )
        if isinstance(config.include_inbound_ports, str):  # ALL
            inbound.append(f"-p tcp -j {IN_REDIRECT}")
        else:
            inbound += _ports_rules(config.include_inbound_ports, IN_REDIRECT)
        chains[INBOUND] = inbound
        chains[IN_REDIRECT] = [f"-p tcp -j REDIRECT --to-ports {constants.INBOUND_PORT}"]
        jumps.append(Jump("PREROUTING", 1, f"-p tcp {comment} -j {INBOUND}"))

    uid, gid = ids.uid, ids.gid
    out = [
        # The agent's own sockets (DNS forwarder, probes) set SO_MARK=BYPASS_MARK: never captured.
        f"-m mark --mark {constants.BYPASS_MARK:#x} -j RETURN",
        # Envoy's inbound passthrough to the local app (bound to the passthrough source): not captured.
        f"-s {facts.passthrough_source} -o lo -j RETURN",
    ]
    # Replies from the ports inbound capture leaves alone (SSH first of all). A connection that was open
    # before capture came, on a host where nothing had made the kernel track connections yet, looks new
    # to the nat table at its next packet: without these rules the SSH session that installed the agent
    # (Ansible's, an operator's) would be redirected to Envoy and hang.
    out += [
        f"-p tcp --sport {port} -j RETURN"
        for port in dict.fromkeys(DEFAULT_INBOUND_EXCLUDES + config.exclude_inbound_ports)
    ]
    if config.inbound:
        # The proxy connecting to one of this VM's own non-loopback addresses is inbound traffic.
        out += [
            f"-o lo ! -d {facts.loopback} -m owner --uid-owner {uid} -j {INBOUND}",
            f"-o lo ! -d {facts.loopback} -m owner --gid-owner {gid} -j {INBOUND}",
        ]
    out += [f"-m owner --uid-owner {uid} -j RETURN", f"-m owner --gid-owner {gid} -j RETURN"]
    if config.dns:
        out += [f"-p udp --dport 53 -j {DNS}", f"-p tcp --dport 53 -j {DNS}"]
        chains[DNS] = [
            f"-p udp -j REDIRECT --to-ports {constants.DNS_PROXY_PORT}",
            f"-p tcp -j REDIRECT --to-ports {constants.DNS_PROXY_PORT}",
        ]
    out += ["-o lo -j RETURN", f"-d {facts.loopback} -j RETURN"]
    out += [f"-d {addr} -j RETURN" for addr in facts.metadata]
    out += [f"-d {net} -j RETURN" for net in _family_nets(config.exclude_outbound_cidrs, family)]
    out += _ports_rules(config.exclude_outbound_ports, "RETURN")
    if isinstance(config.include_outbound_cidrs, str):  # ALL
        out.append(f"-p tcp -j {REDIRECT}")
    else:
        out += [
            f"-p tcp -d {net} -j {REDIRECT}" for net in _family_nets(config.include_outbound_cidrs, family)
        ]
    if any(rule.endswith(f"-j {REDIRECT}") for rule in out):
        chains[REDIRECT] = [f"-p tcp -j REDIRECT --to-ports {constants.OUTBOUND_PORT}"]
    chains[OUTPUT] = out
    jumps.append(Jump("OUTPUT", 1, f"{comment} -j {OUTPUT}"))
    if mark_table:
        chains[TABLE_MARKER] = []
    return NatState(chains=chains, jumps=jumps, table_exists=True, table_empty=False)


def transition(current: NatState, target: NatState) -> str:
    """The iptables-restore ``--noflush`` input that replaces ``current``'s VMAGENT state with ``target``'s.

    One transaction: every VMAGENT chain of either state is declared (which flushes it), the current
    jumps are deleted, the target rules are added, chains no longer wanted are deleted, and the target
    jumps are inserted at their positions (1 = ahead of every existing rule). Returns "" when both
    states are empty (nothing to do). Rules outside VMAGENT chains and jumps are never touched.
    """
    if not current.applied and not target.applied:
        return ""
    lines = ["*nat"]
    names = list(dict.fromkeys([*current.chains, *target.chains]))
    lines += [f":{name} - [0:0]" for name in names]
    lines += [f"-D {jump.chain} {jump.spec}" for jump in current.jumps]
    for name, rules in target.chains.items():
        lines += [f"-A {name} {rule}" for rule in rules]
    lines += [f"-X {name}" for name in names if name not in target.chains]
    for jump in sorted(target.jumps, key=lambda j: (j.chain, j.position)):
        lines.append(f"-I {jump.chain} {jump.position} {jump.spec}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def describe(state: NatState) -> list[str]:
    """``state`` as iptables-save style lines (jumps first, then each chain's rules)."""
    lines = [f"-A {jump.chain} {jump.spec}    (position {jump.position})" for jump in state.jumps]
    for name, rules in state.chains.items():
        lines.append(f":{name}")
        lines += [f"-A {name} {rule}" for rule in rules]
    return lines
