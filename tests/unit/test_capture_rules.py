"""Rendering capture rules, parsing iptables-save, and the CaptureManager's decisions with a fake iptables."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from vmagent.agent.capture import CaptureManager, format_plan
from vmagent.agent.capture_config import CaptureConfig, ProxyIds
from vmagent.agent.capture_rules import NatState, desired_state, parse_save, transition
from vmagent.common.errors import CommandError, ConfigError, VmagentError

SRC = "/etc/vmagent/config.yaml"
IDS = ProxyIds("vmagent-proxy", 4242, 4343)  # deliberately not 1337


def cfg(**data: Any) -> CaptureConfig:
    return CaptureConfig.from_mapping(data, SRC)


def lines(text: str) -> list[str]:
    return text.splitlines()


def render(config: CaptureConfig, family: str = "ipv4") -> list[str]:
    return lines(transition(NatState(), desired_state(config, IDS, family)))  # type: ignore[arg-type]


# -- rendering -------------------------------------------------------------------------------------------


def test_default_ipv4_rules() -> None:
    out = render(cfg())
    assert out[0] == "*nat" and out[-1] == "COMMIT"
    # jumps are inserted at the top of the built-in chains, after the VMAGENT chains are filled
    assert out[-3:-1] == [
        '-I OUTPUT 1 -m comment --comment "vmagent capture" -j VMAGENT_OUTPUT',
        '-I PREROUTING 1 -p tcp -m comment --comment "vmagent capture" -j VMAGENT_INBOUND',
    ]
    assert not any(line.startswith("-A PREROUTING") or line.startswith("-A OUTPUT ") for line in out)
    inbound = [line for line in out if line.startswith("-A VMAGENT_INBOUND ")]
    assert inbound == [
        "-A VMAGENT_INBOUND -p tcp --dport 22 -j RETURN",
        "-A VMAGENT_INBOUND -p tcp --dport 15020 -j RETURN",
        "-A VMAGENT_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A VMAGENT_INBOUND -p tcp --dport 15090 -j RETURN",
        "-A VMAGENT_INBOUND -p tcp -j VMAGENT_IN_REDIRECT",
    ]
    assert "-A VMAGENT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in out
    assert "-A VMAGENT_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in out
    output = [
        line.removeprefix("-A VMAGENT_OUTPUT ") for line in out if line.startswith("-A VMAGENT_OUTPUT ")
    ]
    assert output == [
        "-m mark --mark 0x539 -j RETURN",
        "-s 127.0.0.6/32 -o lo -j RETURN",
        "-p tcp --sport 22 -j RETURN",
        "-p tcp --sport 15020 -j RETURN",
        "-p tcp --sport 15021 -j RETURN",
        "-p tcp --sport 15090 -j RETURN",
        "-o lo ! -d 127.0.0.0/8 -m owner --uid-owner 4242 -j VMAGENT_INBOUND",
        "-o lo ! -d 127.0.0.0/8 -m owner --gid-owner 4343 -j VMAGENT_INBOUND",
        "-m owner --uid-owner 4242 -j RETURN",
        "-m owner --gid-owner 4343 -j RETURN",
        # DNS capture is on by default (before the loopback return, so a local stub resolver is covered)
        "-p udp --dport 53 -j VMAGENT_DNS",
        "-p tcp --dport 53 -j VMAGENT_DNS",
        "-o lo -j RETURN",
        "-d 127.0.0.0/8 -j RETURN",
        "-d 169.254.169.254/32 -j RETURN",
        "-p tcp -j VMAGENT_REDIRECT",
    ]
    assert "-A VMAGENT_DNS -p udp -j REDIRECT --to-ports 15053" in out
    assert not any("VMAGENT_DNS" in line for line in render(cfg(dns=False)))  # the opt-out
    assert not any("1337" in line for line in out)


def test_default_ipv6_rules_use_ipv6_addresses() -> None:
    out = render(cfg(), "ipv6")
    assert "-A VMAGENT_OUTPUT -s ::6/128 -o lo -j RETURN" in out
    assert "-A VMAGENT_OUTPUT -d ::1/128 -j RETURN" in out
    assert "-A VMAGENT_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 4242 -j VMAGENT_INBOUND" in out
    assert not any("127.0.0" in line or "169.254" in line for line in out)


def test_custom_rules() -> None:
    config = cfg(
        include_inbound_ports=[8080, 9090],
        exclude_inbound_ports=[9000],
        include_outbound_cidrs=["10.0.0.0/8", "fd00::/8"],
        exclude_outbound_cidrs=["10.9.0.0/16", "fd00:9::/32"],
        exclude_outbound_ports=[5432],
        dns=True,
    )
    out = render(config)
    inbound = [line for line in out if line.startswith("-A VMAGENT_INBOUND ")]
    assert inbound[-3:] == [
        "-A VMAGENT_INBOUND -p tcp --dport 9000 -j RETURN",
        "-A VMAGENT_INBOUND -p tcp --dport 8080 -j VMAGENT_IN_REDIRECT",
        "-A VMAGENT_INBOUND -p tcp --dport 9090 -j VMAGENT_IN_REDIRECT",
    ]
    output = [
        line.removeprefix("-A VMAGENT_OUTPUT ") for line in out if line.startswith("-A VMAGENT_OUTPUT ")
    ]
    # DNS comes before the loopback exclusion: a stub resolver on 127.0.0.53 must be captured too
    assert output.index("-p udp --dport 53 -j VMAGENT_DNS") < output.index("-o lo -j RETURN")
    assert output.index("-p tcp --dport 53 -j VMAGENT_DNS") < output.index("-o lo -j RETURN")
    # ... but after the bypass mark and the proxy's own traffic
    assert output.index("-m mark --mark 0x539 -j RETURN") < output.index("-p udp --dport 53 -j VMAGENT_DNS")
    assert output.index("-m owner --gid-owner 4343 -j RETURN") < output.index(
        "-p udp --dport 53 -j VMAGENT_DNS"
    )
    assert output[-4:] == [
        "-d 169.254.169.254/32 -j RETURN",
        "-d 10.9.0.0/16 -j RETURN",
        "-p tcp --dport 5432 -j RETURN",
        "-p tcp -d 10.0.0.0/8 -j VMAGENT_REDIRECT",
    ]
    assert "-A VMAGENT_DNS -p udp -j REDIRECT --to-ports 15053" in out
    assert "-A VMAGENT_DNS -p tcp -j REDIRECT --to-ports 15053" in out
    out6 = render(config, "ipv6")
    assert "-A VMAGENT_OUTPUT -d fd00:9::/32 -j RETURN" in out6
    assert "-A VMAGENT_OUTPUT -p tcp -d fd00::/8 -j VMAGENT_REDIRECT" in out6
    assert not any("10.0.0.0/8" in line for line in out6)


def test_inbound_off_and_no_outbound_cidrs() -> None:
    out = render(cfg(inbound=False, include_outbound_cidrs=[]))
    assert not any("PREROUTING" in line or "VMAGENT_INBOUND" in line for line in out)
    assert not any("VMAGENT_REDIRECT" in line for line in out)
    assert '-I OUTPUT 1 -m comment --comment "vmagent capture" -j VMAGENT_OUTPUT' in out


# -- parsing and transitions -----------------------------------------------------------------------------

SAVED = """# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9 -j VMAGENT_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:VMAGENT_INBOUND - [0:0]
:VMAGENT_OUTPUT - [0:0]
-A PREROUTING -p tcp -m comment --comment "vmagent capture" -j VMAGENT_INBOUND
-A PREROUTING -j DOCKER
-A OUTPUT -d 10.231.9.9/32 -j RETURN
-A OUTPUT -m comment --comment "vmagent capture" -j VMAGENT_OUTPUT
-A VMAGENT_INBOUND -p tcp -m tcp --dport 22 -j RETURN
COMMIT
"""


def test_parse_save_finds_chains_jumps_and_positions() -> None:
    state = parse_save(SAVED)
    assert state.table_exists and not state.table_empty
    assert state.chains == {"VMAGENT_INBOUND": ["-p tcp -m tcp --dport 22 -j RETURN"], "VMAGENT_OUTPUT": []}
    assert [(j.chain, j.position, j.spec) for j in state.jumps] == [
        ("PREROUTING", 1, '-p tcp -m comment --comment "vmagent capture" -j VMAGENT_INBOUND'),
        ("OUTPUT", 2, '-m comment --comment "vmagent capture" -j VMAGENT_OUTPUT'),
    ]
    assert state.applied and not state.created_table


def test_parse_save_empty_and_absent_tables() -> None:
    assert not parse_save("").table_exists
    empty = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    assert empty.table_exists and empty.table_empty and not empty.applied
    assert not parse_save("*nat\n:OUTPUT DROP [0:0]\nCOMMIT\n").table_empty


def test_clean_transition_removes_exactly_ours() -> None:
    out = lines(transition(parse_save(SAVED), NatState()))
    assert out == [
        "*nat",
        ":VMAGENT_INBOUND - [0:0]",
        ":VMAGENT_OUTPUT - [0:0]",
        '-D PREROUTING -p tcp -m comment --comment "vmagent capture" -j VMAGENT_INBOUND',
        '-D OUTPUT -m comment --comment "vmagent capture" -j VMAGENT_OUTPUT',
        "-X VMAGENT_INBOUND",
        "-X VMAGENT_OUTPUT",
        "COMMIT",
    ]


def test_nothing_to_nothing_is_empty() -> None:
    assert transition(NatState(), NatState()) == ""


def test_reapply_deletes_old_jumps_before_inserting() -> None:
    out = lines(transition(parse_save(SAVED), desired_state(cfg(), IDS, "ipv4")))
    first_insert = next(i for i, line in enumerate(out) if line.startswith("-I "))
    deletes = [i for i, line in enumerate(out) if line.startswith("-D ")]
    assert len(deletes) == 2 and max(deletes) < first_insert
    assert sum(1 for line in out if line.startswith("-I ")) == 2
    assert not any(line.startswith("-X VMAGENT_OUTPUT") for line in out)


# -- CaptureManager with a fake iptables ------------------------------------------------------------------

NFT_TOOLS = {"iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore"}
LEGACY_TOOLS = {t.replace("-nft-", "-legacy-") for t in NFT_TOOLS}


class FakeIptables:
    """Records commands; ``saves`` maps a save binary to its output; restores of binaries in ``failing``
    fail; a successful restore replaces the matching save output with ``after[restore binary]``; a
    restore without ``--noflush`` of an empty ``*nat`` deletes the table (as iptables-nft-restore does:
    tests/system/test_capture.py checks the real one)."""

    def __init__(self, tools: set[str], saves: dict[str, str] | None = None) -> None:
        self.tools = set(tools)
        self.saves = dict(saves or {})
        self.broken: set[str] = set()
        self.failing: set[str] = set()
        self.after: dict[str, str] = {}
        self.calls: list[tuple[list[str], str | None]] = []

    def which(self, name: str) -> str | None:
        return f"/usr/sbin/{name}" if name in self.tools else None

    def restores(self) -> list[tuple[str, str]]:
        return [(cmd[0], text or "") for cmd, text in self.calls if cmd[0].endswith("-restore")]

    def __call__(
        self, cmd: list[str], *, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append((cmd, input))
        name = cmd[0]
        if name in self.broken or name in self.failing:
            if check:
                raise CommandError(cmd, 1, f"{name}: line 7 failed")
            return subprocess.CompletedProcess(cmd, 1, "", "failed")
        if name.endswith("-restore"):
            save = name.replace("-restore", "-save")
            if "--noflush" not in cmd and input == "*nat\nCOMMIT\n":
                self.saves[save] = ""
            elif name in self.after:
                self.saves[save] = self.after[name]
        return subprocess.CompletedProcess(cmd, 0, self.saves.get(name, ""), "")


def manager(fake: FakeIptables, **data: Any) -> CaptureManager:
    return CaptureManager(cfg(**data), runner=fake, which=fake.which, lookup=lambda user: IDS)


def test_render_covers_both_families_when_ip6tables_works() -> None:
    fake = FakeIptables(NFT_TOOLS)
    texts = manager(fake).render()
    assert set(texts) == {"ipv4", "ipv6"}
    assert "--uid-owner 4242" in texts["ipv4"] and "::1/128" in texts["ipv6"]


def test_ipv6_auto_skips_when_ip6tables_fails_but_true_is_an_error() -> None:
    fake = FakeIptables(NFT_TOOLS)
    fake.broken.add("ip6tables-nft-save")
    assert set(manager(fake).render()) == {"ipv4"}
    with pytest.raises(VmagentError, match=r"capture.ipv6 is true in /etc/vmagent/config.yaml but ip6tables"):
        manager(fake, ipv6=True).render()


def test_auto_backend_follows_existing_rules() -> None:
    legacy_rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n"
    fake = FakeIptables(NFT_TOOLS | LEGACY_TOOLS, {"iptables-legacy-save": legacy_rules})
    assert manager(fake).backend().name == "legacy"
    # but the backend that holds our chains wins, so clean finds what apply installed
    fake.saves["iptables-nft-save"] = SAVED.replace(
        "-A INPUT -p tcp -m tcp --dport 9 -j VMAGENT_NOT_NAT\n", ""
    )
    assert manager(fake).backend().name == "nft"
    assert manager(FakeIptables(NFT_TOOLS | LEGACY_TOOLS)).backend().name == "nft"
    assert manager(FakeIptables(LEGACY_TOOLS)).backend().name == "legacy"
    assert manager(FakeIptables(NFT_TOOLS | LEGACY_TOOLS), backend="legacy").backend().name == "legacy"


def test_requested_backend_not_installed() -> None:
    fake = FakeIptables(LEGACY_TOOLS)
    with pytest.raises(VmagentError) as info:
        manager(fake, backend="nft").apply()
    assert str(info.value) == (
        "capture backend 'nft' (from /etc/vmagent/config.yaml) is not installed: iptables-nft-restore and "
        "ip6tables-nft-restore are missing; install iptables or set capture.backend: auto"
    )
    assert fake.restores() == []


def test_unknown_backend_in_a_hand_built_config_is_rejected() -> None:
    config = CaptureConfig(backend="ebpf", source=SRC)  # type: ignore[arg-type]
    fake = FakeIptables(NFT_TOOLS)
    with pytest.raises(VmagentError, match=r"capture.backend: unknown backend 'ebpf'"):
        CaptureManager(config, runner=fake, which=fake.which, lookup=lambda u: IDS).apply()


def test_missing_proxy_user_changes_nothing() -> None:
    fake = FakeIptables(NFT_TOOLS)

    def lookup(user: str) -> ProxyIds:
        raise KeyError(user)

    with pytest.raises(ConfigError, match=r"capture.proxy_user: user 'vmagent-proxy'"):
        CaptureManager(cfg(), runner=fake, which=fake.which, lookup=lookup).apply()
    assert fake.restores() == []


def test_ipv6_failure_rolls_ipv4_back() -> None:
    fake = FakeIptables(NFT_TOOLS, {"iptables-nft-save": "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"})
    fake.after["iptables-nft-restore"] = SAVED  # what IPv4 looks like once applied
    fake.failing.add("ip6tables-nft-restore")
    with pytest.raises(VmagentError) as info:
        manager(fake).apply()
    assert str(info.value) == (
        "capture apply failed for ipv6: command 'ip6tables-nft-restore --noflush --wait=10' failed with "
        "status 1: ip6tables-nft-restore: line 7 failed; ipv4 rolled back, nothing was changed"
    )
    restores = fake.restores()
    assert [name for name, _ in restores] == [
        "iptables-nft-restore",
        "ip6tables-nft-restore",
        "iptables-nft-restore",
    ]
    rollback = restores[-1][1]
    assert '-D OUTPUT -m comment --comment "vmagent capture" -j VMAGENT_OUTPUT' in rollback
    assert "-X VMAGENT_OUTPUT" in rollback and "-I " not in rollback


def test_clean_when_nothing_applied_runs_no_restore() -> None:
    fake = FakeIptables(NFT_TOOLS)
    m = manager(fake)
    assert not m.is_applied()
    m.clean()
    assert fake.restores() == []


def test_dry_run_text_names_the_command() -> None:
    fake = FakeIptables(NFT_TOOLS)
    m = manager(fake)
    text = format_plan(m.plan_apply(), m.backend())
    assert text.startswith("# ipv4: iptables-nft-restore --noflush --wait=10\n*nat\n")
    assert "# ipv6: ip6tables-nft-restore --noflush --wait=10\n*nat\n" in text
    # no nat table yet: apply records that it creates it, so clean can remove it again
    assert ":VMAGENT_CREATED_TABLE - [0:0]" in text
    assert fake.restores() == []
    assert format_plan(m.plan_clean(), m.backend()).count("# (nothing to do)") == 2


EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_clean_deletes_the_nat_table_apply_created_without_the_nft_binary(backend: str) -> None:
    tools = NFT_TOOLS if backend == "nft" else LEGACY_TOOLS
    fake = FakeIptables(tools)
    m = manager(fake)
    save = f"iptables-{backend}-save"
    restore = f"iptables-{backend}-restore"
    fake.after[restore] = transition(NatState(), desired_state(cfg(), IDS, "ipv4", mark_table=True))
    fake.after[restore.replace("iptables", "ip6tables")] = fake.after[restore]
    m.apply()
    assert m.state("ipv4").created_table
    fake.after = {restore: EMPTY_NAT, restore.replace("iptables", "ip6tables"): EMPTY_NAT}
    dry = format_plan(m.plan_clean(), m.backend())
    fake.calls.clear()
    m.clean()
    cmds = [cmd for cmd, _ in fake.calls if cmd[0].endswith("-restore")]
    texts = [text for cmd, text in fake.calls if cmd[0].endswith("-restore")]
    if backend == "nft":
        # per family: the --noflush transaction removing ours, then the table drop through the same tool
        assert cmds == [
            [restore, "--noflush", "--wait=10"],
            [restore, "--wait=10"],
            [restore.replace("iptables", "ip6tables"), "--noflush", "--wait=10"],
            [restore.replace("iptables", "ip6tables"), "--wait=10"],
        ]
        assert texts[1] == texts[3] == "*nat\nCOMMIT\n"
        assert fake.saves[save] == ""
        assert (
            f"# then, when the nat table apply created is empty again, {restore} --wait=10 deletes it:" in dry
        )
    else:
        # a legacy table cannot be deleted: only the --noflush transactions run, the empty table stays
        assert all("--noflush" in cmd for cmd in cmds) and len(cmds) == 2
        assert fake.saves[save] == EMPTY_NAT
        assert "# then" not in dry
    assert not any(cmd[0] == "nft" for cmd, _ in fake.calls)


def test_clean_keeps_a_nat_table_that_holds_rules_of_others() -> None:
    fake = FakeIptables(NFT_TOOLS)
    m = manager(fake)
    applied = transition(NatState(), desired_state(cfg(), IDS, "ipv4", mark_table=True))
    fake.after = {"iptables-nft-restore": applied, "ip6tables-nft-restore": applied}
    m.apply()
    # someone added a rule of their own to the table apply created
    others = EMPTY_NAT.replace("COMMIT", "-A OUTPUT -d 10.9.9.9/32 -j RETURN\nCOMMIT")
    fake.after = {"iptables-nft-restore": others, "ip6tables-nft-restore": others}
    fake.calls.clear()
    m.clean()
    assert all("--noflush" in cmd for cmd, _ in fake.calls if cmd[0].endswith("-restore"))
    assert fake.saves["iptables-nft-save"] == others


def test_show_lists_our_rules() -> None:
    fake = FakeIptables(NFT_TOOLS, {"iptables-nft-save": SAVED})
    text = manager(fake).show()
    assert text.splitlines()[:3] == [
        "backend: nft",
        "ipv4: applied",
        '  -A PREROUTING -p tcp -m comment --comment "vmagent capture" -j VMAGENT_INBOUND',
    ]
    assert "  -A VMAGENT_INBOUND -p tcp -m tcp --dport 22 -j RETURN" in text
    assert "ipv6: not applied" in text
