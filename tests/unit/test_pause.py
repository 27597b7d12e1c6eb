"""Pause adapters per kind: the patch, and the exact undo."""

from __future__ import annotations

import pytest

from breaker.actions.pause import KINDS, is_paused, pause, repause_needed, resume


@pytest.mark.parametrize("kind", ["TrainingJob", "Job", "JobSet", "TrainJob", "RayJob"])
def test_suspend_kinds(kind: str) -> None:
    running = {"spec": {"suspend": False}}
    patch, record = pause(kind, running)
    assert patch == {"spec": {"suspend": True}}
    assert record == {"field": "spec.suspend", "was": False}
    assert resume(kind, record) == {"spec": {"suspend": False}}
    assert is_paused(kind, {"spec": {"suspend": True}})


@pytest.mark.parametrize(
    "kind", ["PyTorchJob", "TFJob", "MPIJob", "XGBoostJob", "PaddleJob", "JAXJob"]
)
def test_kubeflow_kinds_use_run_policy(kind: str) -> None:
    patch, record = pause(kind, {"spec": {"runPolicy": {"cleanPodPolicy": "None"}}})
    assert patch == {"spec": {"runPolicy": {"suspend": True}}}
    assert resume(kind, record) == {"spec": {"runPolicy": {"suspend": False}}}
    assert KINDS[kind].group == "kubeflow.org"


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_scaled_kinds_remember_their_replicas(kind: str) -> None:
    patch, record = pause(kind, {"spec": {"replicas": 6}})
    assert patch == {"spec": {"replicas": 0}}
    assert resume(kind, record) == {"spec": {"replicas": 6}}
    _, unset = pause(kind, {"spec": {}})
    assert resume(kind, unset) == {"spec": {"replicas": 1}}  # the API server's default


def test_a_workload_already_paused_stays_paused_after_reset() -> None:
    _, record = pause("Job", {"spec": {"suspend": True}})
    assert resume("Job", record) == {"spec": {"suspend": True}}


def test_an_unpaused_workload_is_noticed() -> None:
    assert repause_needed("TrainingJob", {"spec": {"suspend": False}})
    assert not repause_needed("Deployment", {"spec": {"replicas": 0}})
    assert repause_needed("Deployment", {"spec": {"replicas": 2}})
