"""The agent gives up every capability its configuration does not need, before it starts any thread.

The agent runs as root (iptables, Envoy under another uid), with the unit's CapabilityBoundingSet as the
outer limit. ``vmagent run`` then narrows it further, for itself and every process it will start:

============================  ===============================================================  ============
capability                    why the running agent keeps it                                   kept when
============================  ===============================================================  ============
CAP_NET_ADMIN, CAP_NET_RAW    install and remove the capture chains (iptables, also at leave,   always
                              stop and after a crash of Envoy); iptables-legacy's raw socket
CAP_SETUID, CAP_SETGID        start (and restart after a crash) Envoy as the proxy user; join  Envoy runs as
                              the proxy's group to reach Envoy's admin socket                  another user
CAP_KILL                      signal Envoy (drain, stop), which runs under another uid         same
CAP_NET_BIND_SERVICE          handed to a gateway's Envoy as an ambient capability (80, 443)   gateway mode
============================  ===============================================================  ============

Everything else goes, CAP_SETPCAP (which the unit grants only for this) last: it is removed from the
bounding set (so a child run as root, like iptables, cannot get it back on exec), and from the permitted,
effective, inheritable and ambient sets. Capabilities are per thread on Linux, and a new thread or
child copies its creator's: this runs in the main thread before the agent starts any other.

Without CAP_SETPCAP (a development run as an ordinary user, or a unit without it) the bounding set stays
as it is and only the process's own sets shrink; that is logged, not fatal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# Capability numbers from <linux/capability.h> (those named in this module and the unit).
CAPS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_ADMIN": 21,
}
_NAMES = {v: k for k, v in CAPS.items()}
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def cap_name(number: int) -> str:
    return _NAMES.get(number, f"cap_{number}")


def needed(*, envoy_as_other_user: bool, gateway: bool) -> set[str]:
    """The capabilities the running agent keeps (see the table above)."""
    keep = {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    if envoy_as_other_user:
        keep |= {"CAP_SETUID", "CAP_SETGID", "CAP_KILL"}
    if gateway:
        keep.add("CAP_NET_BIND_SERVICE")
    return keep


def current(kind: str, pid: int | str = "self") -> set[int]:
    """Capability numbers of ``kind`` (``CapEff``, ``CapPrm``, ``CapInh``, ``CapBnd``, ``CapAmb``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == kind:
            mask = int(value.strip(), 16)
            return {n for n in range(64) if mask >> n & 1}
    raise ValueError(f"/proc/{pid}/status has no {kind}")


def drop_all_but(keep_names: Iterable[str]) -> set[int]:
    """Reduce this thread's (and its future threads' and children's) capabilities to ``keep_names``;
    returns the capability numbers that were dropped from the bounding set."""
    keep = {CAPS[name] for name in keep_names}
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    dropped: set[int] = set()
    bounding = current("CapBnd")
    if CAPS["CAP_SETPCAP"] in current("CapEff"):
        for cap in sorted(bounding - keep):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
                dropped.add(cap)
            else:
                log.warning("cannot drop %s from the bounding set: %s", cap_name(cap), ctypes.get_errno())
    elif bounding - keep:
        log.info("no CAP_SETPCAP: the capability bounding set stays as it is")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        log.warning("capget failed (errno %d); capabilities left as they are", ctypes.get_errno())
        return dropped
    for i in range(2):
        mask = 0
        for cap in keep:
            if cap // 32 == i:
                mask |= 1 << (cap % 32)
        data[i].permitted &= mask
        data[i].effective &= mask
        data[i].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        log.warning("capset failed (errno %d); capabilities left as they are", ctypes.get_errno())
    return dropped
