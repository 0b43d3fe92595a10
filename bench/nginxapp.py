"""A fast, steady server application for the data-plane benchmark: Debian's nginx answering every
request with a fixed ``return 200`` body, run inside a network namespace as an ordinary user.

One worker process, no access log, keep-alive without a request limit, and the same server block on
every port given (the benchmark reaches it through the mesh on one port and directly on another, so
both paths end in the same process). ``ensure_debian_packages`` installs what is missing with apt.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from vmagent.common import proc
from vmagent.common.errors import CommandError
from vmagent.lab.netns import Netns
from vmagent.lab.wait import wait_for

NGINX = "/usr/sbin/nginx"

CONFIG = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  default_type text/plain;
  server {{
{listens}
    location / {{ return 200 "{body}"; }}
  }}
}}
"""


def ensure_debian_packages(
    packages: dict[str, str], progress: Callable[[str], None] | None = None
) -> list[str]:
    """Install the Debian packages whose tool (key: a command name or absolute path) is missing, with
    ``apt-get install -y``; returns the packages installed. Needs root and Debian's package lists."""
    missing = sorted({pkg for tool, pkg in packages.items() if shutil.which(tool) is None})
    if not missing:
        return []
    if os.geteuid() != 0:
        raise SystemExit(
            f"missing {', '.join(missing)}: run as root or `apt-get install {' '.join(missing)}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if progress is not None:
        progress(f"installing {', '.join(missing)} with apt-get")
    try:
        proc.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], timeout=600, env=env
        )
    except CommandError:  # stale or absent package lists: refresh once and retry
        proc.run(["apt-get", "update", "-q"], timeout=600, env=env)
        proc.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], timeout=600, env=env
        )
    return missing


class NginxApp:
    """nginx in ``ns`` as ``user``, listening on ``ports`` (all addresses), answering ``body_bytes`` bytes."""

    def __init__(self, ns: Netns, workdir: Path, ports: Sequence[int], body_bytes: int, user: str = "nobody"):
        self.ns = ns
        self.dir = workdir
        self.ports = list(ports)
        self.body_bytes = body_bytes
        self.user = user
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        entry = pwd.getpwnam(self.user)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        listens = "\n".join(f"    listen {p} backlog=4096;" for p in self.ports)
        conf = self.dir / "nginx.conf"
        conf.write_text(CONFIG.format(dir=self.dir, listens=listens, body="x" * self.body_bytes))
        cmd = [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)]
        self.process = self.ns.popen([*cmd, "-g", "daemon off;"], user=self.user)
        for port in self.ports:
            wait_for(
                lambda p=port: self._alive() and self.ns.listening(p),  # type: ignore[misc]
                timeout=timeout,
                interval=0.05,
                what=f"nginx listening on {port} in {self.ns.name}",
            )

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            out = self.process.stdout.read() if self.process.stdout else ""
            raise RuntimeError(f"nginx exited with status {self.process.returncode}: {out}")
        return True

    def pids(self) -> list[int]:
        """The master and its worker(s)."""
        import psutil

        if self.process is None:
            return []
        master = psutil.Process(self.process.pid)
        return [master.pid, *(c.pid for c in master.children(recursive=True))]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
