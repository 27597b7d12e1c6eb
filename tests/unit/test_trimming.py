"""What the operator keeps of an object before kopf holds it: every index function and
handler filter of a trimmed kind answers the same on a realistic object and on its trimmed
copy, and the trimmed copy is much smaller."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
from kopf._cogs.structs import references
from kopf._core.intents import registries

import breaker.runner  # registers every handler and index
from breaker import trimming
from breaker.constants import JOB_LABEL, KEPT_ANNOTATION, QUARANTINE_LABEL
from breaker.controllers.config import OperatorConfig
from breaker.serving import Serving

_spec = importlib.util.spec_from_file_location(
    "realistic", Path(__file__).parents[2] / "bench" / "realistic.py"
)
assert _spec is not None
assert _spec.loader is not None
realistic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(realistic)

RESOURCES = {
    ("", "pods"): references.Resource("", "v1", "pods", kind="Pod", namespaced=True),
    ("", "nodes"): references.Resource("", "v1", "nodes", kind="Node", namespaced=False),
    ("batch", "jobs"): references.Resource("batch", "v1", "jobs", kind="Job", namespaced=True),
    ("apps", "replicasets"): references.Resource(
        "apps", "v1", "replicasets", kind="ReplicaSet", namespaced=True
    ),
    ("apps", "deployments"): references.Resource(
        "apps", "v1", "deployments", kind="Deployment", namespaced=True
    ),
    ("apps", "statefulsets"): references.Resource(
        "apps", "v1", "statefulsets", kind="StatefulSet", namespaced=True
    ),
}


def pods() -> list[dict[str, Any]]:
    running = realistic.pod("team-a", "job-7-x2k9q", "gpu-node-1", gpus=2)
    held = copy.deepcopy(running)
    held["metadata"]["labels"][QUARANTINE_LABEL] = "job-7-guard"
    held["metadata"]["labels"][JOB_LABEL] = "rl"
    held["metadata"]["annotations"][KEPT_ANNOTATION] = '{"dns": true}'
    held["metadata"]["deletionTimestamp"] = realistic.STAMP
    held["spec"]["hostNetwork"] = True
    held["spec"]["initContainers"] = realistic.containers(4)[:1]
    pending = copy.deepcopy(running)
    pending["status"] = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
    }
    del pending["spec"]["nodeName"]
    return [running, held, pending]


def nodes() -> list[dict[str, Any]]:
    ready = realistic.node("gpu-node-1")
    cordoned = copy.deepcopy(ready)
    cordoned["spec"]["unschedulable"] = True
    return [ready, cordoned]


def jobs() -> list[dict[str, Any]]:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **realistic.pod("team-a", "rl-0", "n")["metadata"],
            "name": "rl",
            "labels": {JOB_LABEL: "rl"},
        },
        "spec": {
            "suspend": True,
            "parallelism": 2,
            "completions": 2,
            "template": realistic.pod_template(8),
        },
        "status": {
            "conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}],
            "active": 0,
        },
    }
    return [job]


def replicasets() -> list[dict[str, Any]]:
    owned = realistic.pod("team-a", "web-0", "n")["metadata"]
    owned["ownerReferences"][0].update(kind="Deployment", apiVersion="apps/v1", name="web")
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {**owned, "name": "web-5d9f"},
            "spec": {"replicas": 3, "template": realistic.pod_template(0)},
            "status": {"replicas": 3},
        }
    ]


def scaled(kind: str) -> list[dict[str, Any]]:
    metadata = realistic.pod("team-a", "web-0", "n")["metadata"]
    del metadata["ownerReferences"]
    paused: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {**metadata, "name": "web", "annotations": {"breaker.dev/paused-by": "g"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": realistic.pod_template(1),
        },
        "status": {"replicas": 0, "observedGeneration": 4},
    }
    running = copy.deepcopy(paused)
    running["spec"]["replicas"] = 3
    return [paused, running]


BODIES: dict[tuple[str, str], Callable[[], list[dict[str, Any]]]] = {
    ("", "pods"): pods,
    ("", "nodes"): nodes,
    ("batch", "jobs"): jobs,
    ("apps", "replicasets"): replicasets,
    ("apps", "deployments"): lambda: scaled("Deployment"),
    ("apps", "statefulsets"): lambda: scaled("StatefulSet"),
}


def answers(resource: references.Resource, raw: dict[str, Any]) -> dict[str, Any]:
    """What every index function, and every handler's filter, of the kind says of it."""
    body = kopf.Body(cast(Any, copy.deepcopy(raw)))
    kwargs: dict[str, Any] = {
        "body": body,
        "spec": body.spec,
        "status": body.status,
        "meta": body.metadata,
        "labels": body.metadata.labels,
        "annotations": body.metadata.annotations,
        "namespace": body.metadata.namespace,
        "name": body.metadata.name,
        "uid": body.metadata.uid,
        "memo": kopf.Memo(config=OperatorConfig()),
        "logger": logging.getLogger("test"),
        "resource": resource,
        "type": None,
        "event": {"type": None, "object": raw},
        "patch": kopf.Patch(),
    }
    registry = kopf.get_default_registry()
    said: dict[str, Any] = {}
    handlers = [
        *registry._indexing.get_all_handlers(),
        *registry._watching.get_all_handlers(),
    ]
    for handler in handlers:
        if not registries._matches_resource(handler, resource):
            continue
        if handler.when is not None:
            said[f"{handler.id} when"] = handler.when(**kwargs)
        if handler in registry._indexing.get_all_handlers():
            found = handler.fn(**kwargs)
            said[str(handler.id)] = (
                asyncio.run(_awaited(found)) if inspect.isawaitable(found) else found
            )
    return said


async def _awaited(found: Any) -> Any:
    return await found


@pytest.mark.parametrize("kind", list(trimming.KEPT), ids=lambda k: "/".join(filter(None, k)))
def test_every_index_and_filter_answers_the_same_on_the_trimmed_object(
    kind: tuple[str, str],
) -> None:
    resource = RESOURCES[kind]
    for raw in BODIES[kind]():
        trimmed = copy.deepcopy(raw)
        trimming.trim(*kind, trimmed)
        whole = answers(resource, raw)
        assert any(not key.endswith(" when") for key in whole), "no index read this kind"
        assert answers(resource, trimmed) == whole
        assert len(json.dumps(trimmed)) < len(json.dumps(raw)) / 3


def test_managed_fields_and_last_applied_go_from_every_kind() -> None:
    policy = {
        "metadata": {
            "name": "p",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {trimming.LAST_APPLIED: "{...}", "breaker.dev/last-handled": "{}"},
        },
        "spec": {"targets": {}},
    }
    trimming.trim("breaker.dev", "breakerpolicies", policy)
    assert policy == {
        "metadata": {"name": "p", "annotations": {"breaker.dev/last-handled": "{}"}},
        "spec": {"targets": {}},
    }


def test_a_list_keeps_the_named_keys_of_each_item() -> None:
    body = {"spec": {"containers": [{"name": "a", "env": [1], "resources": {"x": 1}}, "odd"]}}
    trimming.keep(body, {"spec": {"containers": {"name": None, "resources": None}}})
    assert body == {"spec": {"containers": [{"name": "a", "resources": {"x": 1}}, "odd"]}}


@pytest.mark.parametrize(
    ("parts", "selected"),
    [(("queue",), True), (("breakers",), False), (("breakers", "queue"), False)],
)
def test_only_a_queue_alone_leaves_finished_pods_unwatched(
    parts: tuple[str, ...], selected: bool
) -> None:
    """The queue reads pods that hold or wait for GPUs; the breakers read finished ones too
    (a pod that mined and exited still has samples, and an owner to find through it)."""
    settings = kopf.OperatorSettings()
    memo = kopf.Memo(config=OperatorConfig(serving=Serving.of(parts, (), None)))
    configure: Any = breaker.runner.configure  # kopf's decorator types it as an activity
    configure(settings=settings, memo=memo)
    found = settings.watching.field_selectors.collect(RESOURCES["", "pods"])
    assert found == ([breaker.runner.LIVE_PODS] if selected else [])
    assert settings.watching.field_selectors.collect(RESOURCES["batch", "jobs"]) == []
