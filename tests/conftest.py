"""Shared fixtures: the real local cluster and Prometheus, once per run, and a namespace per test.

The session fixture reuses a cluster that is already up (and leaves it up); one it had to
start itself it takes down again at the end, unless BREAKER_KEEP_CLUSTER=1.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_api_client import PrometheusConnect

from breaker.api.crd import RESOURCES
from breaker.localcluster import LocalCluster
from breaker.localcluster.paths import repo_root
from tests.helpers import wait_for


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    cluster = LocalCluster()
    was_up = cluster.healthy()
    # A cold first run builds for many minutes: show its progress, not a silent pytest.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print()
        cluster.up()
    yield cluster
    if not was_up and os.environ.get("BREAKER_KEEP_CLUSTER") != "1":
        with capture.global_and_fixture_disabled():
            cluster.down()


@pytest.fixture(scope="session")
def api_client(local_cluster: LocalCluster) -> Any:
    return local_cluster.api_client()


@pytest.fixture(scope="session")
def core(api_client: Any) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def prom(local_cluster: LocalCluster) -> PrometheusConnect:
    return PrometheusConnect(url=local_cluster.prometheus_url, disable_ssl=True)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace for one test, ready for pods, deleted afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"breaker.dev/test": "true"}}})
    # Pods are refused until the ServiceAccount controller has made the default account.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        f"the default ServiceAccount in {name}",
        ignore=(client.ApiException,),
    )
    yield name
    core.delete_namespace(name, propagation_policy="Background")
