"""Where the control plane keeps things by default (no dependencies: the CLI imports it for --help)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/vmagent-cp")
MESH_ROOT_FILE = "mesh-root.pem"  # the mesh root, in the state dir, readable by all (0644)
