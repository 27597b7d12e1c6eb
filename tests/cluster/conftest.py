"""Fixtures of the end-to-end tests: a tenant's namespace and another tenant's beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from breaker.localcluster import LocalCluster
from tests.cluster.scenes import Cluster
from tests.helpers import wait_for


@pytest.fixture
def cluster(
    api_client: Any,
    namespace: str,
    core: client.CoreV1Api,
    local_cluster: LocalCluster,
    operator: Path,
    tmp_path: Path,
) -> Iterator[Cluster]:
    """The tenant's namespace, and another tenant's (``cluster.other``) queued for GPUs."""
    other = f"{namespace[:56]}-other"
    core.create_namespace({"metadata": {"name": other, "labels": {"breaker.dev/test": "true"}}})
    wait_for(
        lambda: core.read_namespaced_service_account("default", other),
        "the other namespace's ServiceAccount",
        ignore=(client.ApiException,),
    )
    found = Cluster(api_client, namespace, local_cluster, tmp_path)
    found.other = other
    yield found
    core.delete_namespace(other, propagation_policy="Background")
