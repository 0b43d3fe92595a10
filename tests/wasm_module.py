"""The proxy-wasm test module, built at test time from tests/testdata/wasm/add_header.wat with wabt's wat2wasm.

The module (ABI 0.2.1, a few hundred bytes) adds the response header ``x-wasm: VALUE``, VALUE being the
first string value of its plugin configuration (``pluginConfig: {value: hello}`` gives ``hello``), or
``on`` without one.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

WAT = Path(__file__).resolve().parent / "testdata" / "wasm" / "add_header.wat"
HEADER = "x-wasm"


def build_module(out_dir: Path) -> Path:
    """Compile the WAT into ``out_dir/add_header.wasm`` and return its path."""
    out = out_dir / "add_header.wasm"
    subprocess.run(["wat2wasm", str(WAT), "-o", str(out)], check=True, capture_output=True, timeout=60)
    return out


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
