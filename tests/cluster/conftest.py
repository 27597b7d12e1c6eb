"""Fixtures of the end-to-end tests: a tenant's namespace and another tenant's beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from breaker_tooling.localcluster import LocalCluster
from tests.cluster.scenes import Cluster
from tests.helpers import wait_for
from tests.kube import as_body

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under this directory ``cluster``: they all need the local control plane.

    The hook sees the whole session's items, so it marks only those that live here.
    """
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)


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
    core.create_namespace(
        as_body({"metadata": {"name": other, "labels": {"breaker.dev/test": "true"}}})
    )
    wait_for(
        lambda: core.read_namespaced_service_account("default", other),
        "the other namespace's ServiceAccount",
        ignore=(client.ApiException,),
    )
    found = Cluster(api_client, namespace, local_cluster, tmp_path)
    found.other = other
    yield found
    core.delete_namespace(other, propagation_policy="Background")
