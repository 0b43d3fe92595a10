"""Fixtures of the Kubernetes tier: the test API server (tests/kubeapi) and clients of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.kubeapi import KubeApiServer


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApiServer]:
    """A running test API server; ``kube_api.kubeconfig()`` is a kubeconfig path for it."""
    server = KubeApiServer(tmp_path / "kubeapi", bookmark_interval=0.5).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kube_client(kube_api: KubeApiServer) -> Iterator[client.ApiClient]:
    """The official Python client, configured from a kubeconfig like any program would be."""
    api = config.new_client_from_config(config_file=str(kube_api.kubeconfig()))
    try:
        yield api
    finally:
        api.close()
