"""One GPU-count parser for pods, nodes and quotas: the forms the API server writes."""

from __future__ import annotations

from typing import Any

import pytest

from breaker.api.quantity import count, gpus


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8, 8),
        ("8", 8),
        (" 16 ", 16),
        ("1k", 1000),  # the API server's canonical form of 1000
        ("2Ki", 2048),
        ("1E", 10**18),
        ("2e3", 2000),
        ("1.5k", 1500),
        ("+4", 4),
        ("0", 0),
    ],
)
def test_whole_counts_are_read_in_every_form(value: Any, expected: int) -> None:
    assert count(value) == expected


@pytest.mark.parametrize("value", ["500m", "1.5", "abc", "", "8 GPUs", -1, True, None, 2.0, "1e-1"])
def test_anything_but_a_whole_count_is_none(value: Any) -> None:
    assert count(value) is None


def test_a_missing_or_unreadable_gpu_count_counts_as_none() -> None:
    assert gpus(None) == 0
    assert gpus("500m") == 0
    assert gpus("1k") == 1000


def test_pods_nodes_and_quotas_read_one_value_alike() -> None:
    """They used to differ: a pod's `int("1k")` raised while the quota's parser said None."""
    from breaker.actions.quota import quantity
    from breaker.api.quantity import pod_gpus
    from breaker.controllers.trainingjobs import node_gpus

    resources = {"limits": {"nvidia.com/gpu": "1k"}}
    assert pod_gpus({"containers": [{"resources": resources}]}) == 1000
    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert node_gpus({}, {**ready, "allocatable": {"nvidia.com/gpu": "1k"}}) == 1000  # type: ignore[arg-type]
    assert quantity("1k") == 1000
