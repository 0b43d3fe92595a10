"""`vmagent-cp validate -f` and `vmagent-cp apply -f`: check Istio YAML, and store it (standalone mode)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmagent.controlplane.config.analyze import analyze
from vmagent.controlplane.config.compat import compat_report
from vmagent.controlplane.config.issues import Issue
from vmagent.controlplane.config.loader import LoadResult, load_paths
from vmagent.controlplane.config.store import ConfigStore
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.paths import DEFAULT_STATE_DIR

# Same default as `vmagent-cp serve --state-dir`.


def add_subcommand(sub: Any) -> None:
    v: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="check Istio config files",
        description="Validate Istio YAML (files, or directories searched recursively). Prints every error "
        "with its file, object and field path and exits 1 if there is any; warnings go to stderr.",
    )
    _files_arg(v)
    v.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: one JSON document on stdout with valid, objects, errors, warnings (and istioCompat)",
    )
    v.add_argument(
        "--istio-compat",
        action="store_true",
        help="also report what would behave differently from Istio: Istio kinds and fields vmagent does "
        "not support (ignored or refused) and semantics it implements differently",
    )
    v.add_argument(
        "--mesh-config",
        type=Path,
        metavar="FILE",
        help="the MeshConfig YAML given to `serve --mesh-config`: check it too, and check the tracing "
        "provider names Telemetry objects use against its extensionProviders",
    )
    v.set_defaults(func=validate)

    a: argparse.ArgumentParser = sub.add_parser(
        "apply",
        help="validate and store config (standalone mode)",
        description="Validate Istio YAML and store the objects in the state store in one transaction. If "
        "anything is invalid, nothing is stored. A running control plane picks the change up within a second.",
    )
    _files_arg(a)
    a.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    a.add_argument("--delete", action="store_true", help="delete the objects named in the files instead")
    a.set_defaults(func=apply)


def _files_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        type=Path,
        required=True,
        metavar="FILE|DIR",
        help="a YAML file or a directory of them; repeatable",
    )


def _report(result: LoadResult, extra_warnings: Sequence[Issue] = ()) -> bool:
    """Print warnings and errors to stderr; True when there is no error."""
    for w in [*result.warnings, *extra_warnings]:
        print(f"warning: {w}", file=sys.stderr)
    for e in result.errors:
        print(str(e), file=sys.stderr)
    if result.errors:
        n = len(result.errors)
        print(
            f"vmagent-cp: error: {n} error{'s' if n != 1 else ''} found; nothing is valid until fixed",
            file=sys.stderr,
        )
        return False
    return True


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _issue_json(issue: Issue) -> dict[str, str]:
    out = {"file": issue.file, "object": issue.obj, "path": issue.path, "message": issue.message}
    if issue.compat:
        out["compat"] = issue.compat
    return out


def _mesh_issues(path: Path, objects: list[ConfigObject]) -> list[Issue]:
    """Errors in the MeshConfig file itself, or in the Telemetry provider names it does not define."""
    import yaml

    from vmagent.common.constants import DEFAULT_TRUST_DOMAIN
    from vmagent.common.errors import ConfigError
    from vmagent.controlplane.snapshots import mesh_options
    from vmagent.controlplane.translate.tracing import provider_ref_issues

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [Issue(str(path), "MeshConfig", "", f"cannot read: {exc}")]
    if not isinstance(loaded, dict):
        return [Issue(str(path), "MeshConfig", "", "expected a mapping of MeshConfig fields")]
    try:
        mesh = mesh_options(DEFAULT_TRUST_DOMAIN, loaded, source=str(path))
    except ConfigError as exc:
        return [Issue("", "", "", str(exc))]
    return provider_ref_issues(objects, mesh.tracing)


def validate(args: argparse.Namespace) -> int:
    result = load_paths(args.files)
    if args.mesh_config is not None:
        result.errors.extend(_mesh_issues(args.mesh_config, result.objects))
    extra = analyze(result.objects) if result.ok else []
    compat = compat_report(result) if args.istio_compat else []
    if args.output == "json":
        doc: dict[str, Any] = {
            "valid": result.ok,
            "objects": len(result.objects),
            "errors": [_issue_json(e) for e in result.errors],
            "warnings": [_issue_json(w) for w in [*result.warnings, *extra]],
        }
        if args.istio_compat:
            doc["istioCompat"] = [_issue_json(c) for c in compat]
        print(json.dumps(doc, indent=2))
        return 0 if result.ok else 1
    ok = _report(result, extra)
    if args.istio_compat:
        print(f"Istio compatibility: {_plural(len(compat), 'difference')}")
        for c in compat:
            print(f"  {c.compat}: {c}")
    if not ok:
        return 1
    print(f"{_plural(len(result.objects), 'object')} valid")
    return 0


def apply(args: argparse.Namespace) -> int:
    result = load_paths(args.files)
    if not result.ok:
        _report(result)
        print("vmagent-cp: nothing was stored", file=sys.stderr)
        return 1
    store = ConfigStore.open(args.state_dir)
    if args.delete:
        _report(result)
        deleted = store.delete(o.key for o in result.objects)
        print(f"{_plural(deleted, 'object')} deleted")
        return 0
    merged: dict[tuple[str, str, str], ConfigObject] = {o.key: o for o in store.list_objects()}
    merged.update({o.key: o for o in result.objects})
    _report(result, analyze(list(merged.values())))
    applied_from = ", ".join(str(f) for f in args.files)
    res = store.apply(result.objects, applied_from=applied_from)
    print(
        f"{_plural(len(result.objects), 'object')} applied "
        f"({res.created} created, {res.updated} updated, {res.unchanged} unchanged)"
    )
    return 0
