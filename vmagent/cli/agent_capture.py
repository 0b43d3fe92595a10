"""`vmagent capture apply|clean|show [--dry-run]`: the iptables rules that send traffic through Envoy."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmagent.agent.capture import CaptureManager, format_plan
from vmagent.agent.capture_config import load_capture_config
from vmagent.agent.paths import DEFAULT_CONFIG_DIR, AgentPaths
from vmagent.common.wire import POD_INFO_DIR


def add_subcommand(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``capture`` on the ``vmagent`` parser."""
    parser = subparsers.add_parser(
        "capture",
        help="install, remove or show the iptables traffic capture",
        description=(
            "apply: install (or update) the VMAGENT_* nat rules from the capture section of the config; "
            "clean: remove exactly what apply added; show: print the current VMAGENT_* rules. "
            "--dry-run prints the iptables-restore input instead of changing anything."
        ),
    )
    parser.add_argument("action", choices=["apply", "clean", "show"])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the exact iptables-restore input apply/clean would feed, change nothing",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"directory holding config.yaml (default {DEFAULT_CONFIG_DIR})",
    )
    parser.add_argument(
        "--pod",
        action="store_true",
        help=f"a pod's init step: --pod-annotations {POD_INFO_DIR}/annotations (the injected downward API file)",
    )
    parser.add_argument(
        "--pod-annotations",
        type=Path,
        metavar="FILE",
        help="a pod's init step: take Istio's traffic.sidecar.istio.io/* annotations from this downward API "
        "file over the config's capture section (see docs/kubernetes.md)",
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run one capture action; VmagentError (exit 1) on failures the user can act on."""
    config_file = AgentPaths(config_dir=args.config_dir).config_file
    config = load_capture_config(config_file)
    if args.pod and args.pod_annotations is None:
        args.pod_annotations = Path(POD_INFO_DIR) / "annotations"
    if args.pod_annotations is not None:
        from vmagent.agent.pod_capture import pod_capture_config

        base = _capture_section(config_file)
        config = pod_capture_config(args.pod_annotations, base)
    manager = CaptureManager(config)
    if args.action == "show":
        print(manager.show(), end="")
        return 0
    if args.action == "apply" and not config.enabled:
        print(f"capture is disabled (capture.enabled: false in {config.source}); nothing applied")
        return 0
    plan = manager.plan_apply() if args.action == "apply" else manager.plan_clean()
    if args.dry_run:
        print(format_plan(plan, manager.backend()), end="")
        return 0
    if args.action == "apply":
        manager.apply()
        print(f"capture applied ({manager.backend().name} backend, {' and '.join(manager.families())})")
    else:
        had = any(plan.texts.values())
        manager.clean()
        print("capture removed" if had else "capture was not applied; nothing to do")
    return 0


def _capture_section(path: Path) -> dict[str, object] | None:
    """The raw ``capture`` mapping of the config file (already validated by load_capture_config)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    section = doc.get("capture") if isinstance(doc, dict) else None
    return dict(section) if isinstance(section, dict) else None
