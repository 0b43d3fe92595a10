"""``python -m tests.kubeapi`` as a separate process: its printed kubeconfig works, its HTTP test hooks
drop watches and compact (for tests whose control plane runs in another process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.kubeapi.certs import CertAuthority


def test_server_process_and_hooks(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kubeapi", "--workdir", str(tmp_path), "--token", "t0ken"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        api = config.new_client_from_config(config_file=info["kubeconfig_token"])
        core = client.CoreV1Api(api)
        assert [n.metadata.name for n in core.list_namespace().items] == [
            "default",
            "kube-public",
            "kube-system",
        ]
        core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
        rv = core.list_namespaced_config_map("default").metadata.resource_version
        core.create_namespaced_config_map("default", {"metadata": {"name": "b"}})
        headers = {"Authorization": "Bearer t0ken"}
        r = requests.post(f"{info['url']}/_test/compact", headers=headers, verify=info["ca"], timeout=30)
        assert r.status_code == 200 and r.json()["compacted"] > int(rv)
        with pytest.raises(ApiException) as e:
            for _ in watch.Watch().stream(
                core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=30
            ):
                pass
        assert e.value.status == 410
        assert (
            requests.post(
                f"{info['url']}/_test/drop-watches", headers=headers, verify=info["ca"], timeout=30
            ).status_code
            == 200
        )
        assert requests.post(f"{info['url']}/_test/compact", verify=info["ca"], timeout=30).status_code == 401
        api.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_server_process_with_given_certificate(tmp_path: Path) -> None:
    ca = CertAuthority("given-ca")
    pair = ca.issue("apiserver", hosts=("127.0.0.1",), server=True)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    args = [
        "--port",
        "0",
        "--cert",
        str(tmp_path / "tls.crt"),
        "--key",
        str(tmp_path / "tls.key"),
        "--cert-ca",
        str(tmp_path / "ca.pem"),
        "--workdir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.Popen([sys.executable, "-m", "tests.kubeapi", *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["ca"] == str(tmp_path / "ca.pem")
        api = config.new_client_from_config(config_file=info["kubeconfig"])
        assert client.VersionApi(api).get_code().git_version.startswith("v1.32")
        api.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
