"""`vmagent-cp revoke`: end and refuse everything of one certificate (and its renewals) or a whole identity."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.ca.certrecords import CertRecords
from vmagent.controlplane.db import StateDb
from vmagent.controlplane.paths import DEFAULT_STATE_DIR


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "revoke",
        help="revoke a workload certificate or identity",
        description="Revoke one VM's certificate (--serial, see `vmagent-cp workloads`), with every "
        "certificate renewed from it, or every certificate of an identity (--identity). A running control "
        "plane then ends their open ADS and registration streams and removes their entries from EDS "
        "(within about a second); renewals and new streams are refused from then on, across restarts. "
        "The VM needs a new join token (`vmagent join --rejoin`).",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--serial", help="certificate serial number, hexadecimal")
    g.add_argument("--identity", help="spiffe://TRUST_DOMAIN/ns/NS/sa/SA")
    p.add_argument("--reason", default="", help="recorded with the revocation")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    db = StateDb.open(args.state_dir)
    try:
        records = CertRecords(db)
        if args.serial:
            records.revoke_serial(args.serial, args.reason)
            print(f"certificate {args.serial} revoked")
        else:
            ident = SpiffeId.parse(args.identity)
            records.revoke_identity(ident, args.reason)
            print(f"identity {ident} revoked")
    finally:
        db.close()
    return 0
