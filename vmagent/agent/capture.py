"""Traffic capture: install, remove and show the ``VMAGENT_*`` nat rules that send traffic to Envoy.

``CaptureManager`` is what ``vmagent capture`` and the daemon use. Every change is one iptables-restore
``--noflush`` transaction per family, so a family is either fully changed or untouched; when IPv6 fails
after IPv4 succeeded, IPv4 is put back as it was. Everything that can be checked (the proxy user, the
backend, IPv6 support) is checked before the first rule is written.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from vmagent.agent.capture_backend import Backend, CommandRunner, Which, detect_backend, read_state
from vmagent.agent.capture_config import CaptureConfig, ProxyIds, lookup_proxy_ids
from vmagent.agent.capture_rules import FAMILIES, Family, NatState, desired_state, transition
from vmagent.common.errors import VmagentError
from vmagent.common.proc import run

log = logging.getLogger(__name__)

# Fed to the nft backend's restore tool WITHOUT --noflush: deletes the (empty) nat table, creates nothing.
DROP_TABLE_INPUT = "*nat\nCOMMIT\n"


@dataclass(frozen=True)
class Plan:
    """What a change would do per family: the restore input (``""`` = nothing to do), the state it
    starts from, and (clean) whether the nat table apply created is to be deleted once it is empty."""

    texts: dict[Family, str]
    before: dict[Family, NatState]
    drop_table: dict[Family, bool] = field(default_factory=dict)


class CaptureManager:
    """Applies ``config`` with the injected command runner (default: vmagent.common.proc.run).

    ``which`` finds binaries and ``lookup`` resolves the proxy user; both are injectable for tests.
    """

    def __init__(
        self,
        config: CaptureConfig,
        *,
        runner: CommandRunner = run,
        which: Which = shutil.which,
        lookup: Callable[[str], ProxyIds] = lookup_proxy_ids,
    ) -> None:
        self.config = config
        self._runner = runner
        self._which = which
        self._lookup = lookup
        self._backend: Backend | None = None
        self._working: dict[Family, bool] = {}

    # -- environment -----------------------------------------------------------------------------------
    def backend(self) -> Backend:
        """The iptables backend in use (detected once; VmagentError when none is installed)."""
        if self._backend is None:
            self._backend = detect_backend(self.config.backend, self._which, self._runner, self.config.source)
        return self._backend

    def family_works(self, family: Family) -> bool:
        """True when the family's save tool runs (IPv6 may be disabled in the kernel)."""
        if family not in self._working:
            result = self._runner(self.backend().save_cmd(family), check=False)
            self._working[family] = result.returncode == 0
            if result.returncode != 0:
                log.debug("%s unusable: %s", self.backend().save[family], result.stderr.strip())
        return self._working[family]

    def families(self) -> tuple[Family, ...]:
        """The families the config captures: IPv4 always; IPv6 when ``ipv6`` is true, or when it is auto
        (None) and ip6tables works. VmagentError when ``ipv6: true`` but ip6tables does not work."""
        if not self.family_works("ipv4"):
            raise VmagentError(f"{self.backend().save['ipv4']} does not work here; capture needs iptables")
        if self.config.ipv6 is False:
            return ("ipv4",)
        if self.family_works("ipv6"):
            return FAMILIES
        if self.config.ipv6:
            raise VmagentError(
                f"capture.ipv6 is true in {self.config.source} but {self.backend().save['ipv6']} does not "
                "work on this machine; set capture.ipv6: false (or auto)"
            )
        log.info("IPv6 capture skipped: ip6tables does not work on this machine")
        return ("ipv4",)

    def proxy_ids(self) -> ProxyIds:
        """The proxy user's uid and gid, looked up (ConfigError when the user is missing)."""
        return self.config.proxy_ids(self._lookup)

    # -- rendering -------------------------------------------------------------------------------------
    def render(self) -> dict[str, str]:
        """Family -> iptables-restore input that installs the config on a host without VMAGENT rules."""
        ids = self.proxy_ids()
        return {f: transition(NatState(), desired_state(self.config, ids, f)) for f in self.families()}

    def state(self, family: Family) -> NatState:
        """The family's current VMAGENT state, read with iptables-save."""
        return read_state(self.backend(), family, self._runner)

    def plan_apply(self) -> Plan:
        """The exact restore input apply would feed now, per family (families the config no longer
        captures get their VMAGENT rules removed)."""
        ids = self.proxy_ids()
        wanted = self.families()
        texts: dict[Family, str] = {}
        before: dict[Family, NatState] = {}
        for family in FAMILIES:
            if family not in wanted and not self.family_works(family):
                continue
            current = before[family] = self.state(family)
            if family in wanted:
                mark = not current.table_exists or current.created_table
                target = desired_state(self.config, ids, family, mark_table=mark)
            else:
                target = NatState()
            texts[family] = transition(current, target)
        return Plan(texts, before)

    def plan_clean(self) -> Plan:
        """The exact restore input clean would feed now (``""`` for families with nothing applied)."""
        texts: dict[Family, str] = {}
        before: dict[Family, NatState] = {}
        for family in FAMILIES:
            if not self.family_works(family):
                continue
            before[family] = self.state(family)
            texts[family] = transition(before[family], NatState())
        return Plan(texts, before, {f: state.created_table for f, state in before.items()})

    # -- changes ---------------------------------------------------------------------------------------
    def apply(self) -> None:
        """Install (or update) the rules for every family; idempotent. On failure nothing stays changed."""
        plan = self.plan_apply()
        done: list[Family] = []
        for family, text in plan.texts.items():
            if not text:
                continue
            try:
                self._restore(family, text)
            except VmagentError as exc:
                rolled = self._rollback(done, plan.before)
                raise VmagentError(f"capture apply failed for {family}: {exc}; {rolled}") from exc
            done.append(family)
        log.info("capture applied (%s backend, %s)", self.backend().name, "+".join(self.families()))

    def clean(self) -> None:
        """Remove every VMAGENT chain and jump (and the nat table when apply created it and it is empty
        again); a no-op when nothing is applied."""
        plan = self.plan_clean()
        for family, text in plan.texts.items():
            if text:
                self._restore(family, text)
            if plan.drop_table.get(family):
                self._drop_table_if_empty(family)
        if any(plan.texts.values()):
            log.info("capture removed")

    def is_applied(self) -> bool:
        """True when any family holds a VMAGENT chain or jump."""
        return any(self.state(f).applied for f in FAMILIES if self.family_works(f))

    def show(self) -> str:
        """A human-readable listing of the VMAGENT state per family, as iptables-save prints it."""
        backend = self.backend()
        lines = [f"backend: {backend.name}"]
        for family in FAMILIES:
            if not self.family_works(family):
                lines.append(f"{family}: unavailable ({backend.save[family]} fails)")
                continue
            state = self.state(family)
            if not state.applied:
                lines.append(f"{family}: not applied")
                continue
            lines.append(f"{family}: applied")
            lines += [f"  -A {j.chain} {j.spec}" for j in state.jumps]
            for name, rules in state.chains.items():
                lines.append(f"  :{name}")
                lines += [f"  -A {name} {rule}" for rule in rules]
        return "\n".join(lines) + "\n"

    # -- helpers ---------------------------------------------------------------------------------------
    def _restore(self, family: Family, text: str) -> None:
        self._runner(self.backend().restore_cmd(family), input=text)

    def _rollback(self, done: list[Family], before: dict[Family, NatState]) -> str:
        """Put the families in ``done`` back to their state in ``before``; says what happened."""
        if not done:
            return "nothing was changed"
        try:
            for family in reversed(done):
                text = transition(self.state(family), before[family])
                if text:
                    self._restore(family, text)
                if not before[family].table_exists:
                    self._drop_table_if_empty(family)
        except VmagentError as exc:
            return f"rolling back {'+'.join(done)} failed too ({exc}); run `vmagent capture clean`"
        return f"{'+'.join(done)} rolled back, nothing was changed"

    def _drop_table_if_empty(self, family: Family) -> None:
        """Delete the family's nat table when it holds nothing (nf_tables backend only).

        iptables-nft-restore without ``--noflush`` deletes every table its input names before filling it
        again, and a table whose input declares nothing is not created again: ``*nat`` + ``COMMIT``
        removes the table with the backend's own tool, so no ``nft`` binary is needed. A legacy
        (x_tables) table lives as long as the kernel module and cannot be removed.
        """
        state = self.state(family)
        if not state.table_exists or not state.table_empty:
            return
        backend = self.backend()
        if backend.name != "nft":
            log.info("%s nat table left in place (empty): a legacy table cannot be removed", family)
            return
        self._runner([backend.restore[family], "--wait=10"], input=DROP_TABLE_INPUT)


def format_plan(plan: Plan, backend: Backend) -> str:
    """The plan as restore input, each family headed by a comment naming the command that reads it."""
    out: list[str] = []
    for family, text in plan.texts.items():
        out.append(f"# {family}: {' '.join(backend.restore_cmd(family))}")
        out.append(text.rstrip("\n") if text else "# (nothing to do)")
        if plan.drop_table.get(family) and backend.name == "nft":
            drop = " ".join([backend.restore[family], "--wait=10"])
            out.append(f"# then, when the nat table apply created is empty again, {drop} deletes it:")
            out += [f"# {line}" for line in DROP_TABLE_INPUT.splitlines()]
    return "\n".join(out) + "\n"
