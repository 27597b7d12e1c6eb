"""The TrainingJob controller: kopf indexes in, one reconcile loop, writes out.

kopf keeps in-memory indexes of TrainingJobs, their Jobs and NetworkPolicies, GPU pods and
nodes. Any change to them wakes a single loop, which reconciles every TrainingJob at once
against those indexes (the queue is global: one job's GPUs are another's admission) and
writes only what differs. At rest it makes no API calls; a slow resync guards against a
missed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client

from breaker import events, kube
from breaker.api.trainingjob import TrainingJob
from breaker.training import queue, render
from breaker.training import status as status_core
from breaker.training.render import GPU_RESOURCE, JOB_LABEL

log = logging.getLogger("breaker.trainingjobs")

TJ = ("breaker.dev", "v1alpha1", "trainingjobs")
RESYNC_SECONDS = 300.0
DEBOUNCE_SECONDS = 0.05


# -- what the indexes hold ---------------------------------------------------------------


def pod_gpus(spec: dict[str, Any]) -> int:
    total = 0
    for container in spec.get("containers", []):
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE) or (
            resources.get("requests") or {}
        ).get(GPU_RESOURCE)
        total += int(amount or 0)
    return total


def _gpu_or_training_pod(spec: kopf.Spec, labels: kopf.Labels, **_: Any) -> bool:
    return JOB_LABEL in labels or pod_gpus(dict(spec)) > 0


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str | None
    phase: str
    gpus: int
    trainingjob: str | None
    deleting: bool


@kopf.index("pods", when=_gpu_or_training_pod)
def gpu_pods(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    labels: kopf.Labels,
    meta: kopf.Meta,
    **_: Any,
) -> dict[tuple[str | None, str], PodInfo]:
    assert namespace is not None
    return {
        (namespace, name): PodInfo(
            namespace=namespace,
            name=name,
            node=spec.get("nodeName"),
            phase=status.get("phase", "Pending"),
            gpus=pod_gpus(dict(spec)),
            trainingjob=labels.get(JOB_LABEL),
            deleting=meta.get("deletionTimestamp") is not None,
        )
    }


@kopf.index("nodes")
def gpu_nodes(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, int]:
    """Allocatable GPUs of each node that can take new pods (0 when it cannot)."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    gpus = int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0))
    return {name: gpus if ready and not spec.get("unschedulable") else 0}


@kopf.index(*TJ)
def trainingjobs(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], Any]:
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.index("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
def trainingjob_jobs(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    labels: kopf.Labels,
    **_: Any,
) -> dict[tuple[str | None, str], status_core.JobView]:
    return {
        (namespace, labels[JOB_LABEL]): status_core.JobView(
            name=name,
            suspended=bool(spec.get("suspend")),
            conditions=tuple(copy.deepcopy(status.get("conditions") or [])),
        )
    }


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels={JOB_LABEL: kopf.PRESENT})
def trainingjob_netpols(
    namespace: str | None, name: str, spec: kopf.Spec, labels: kopf.Labels, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(namespace, labels[JOB_LABEL]): {"name": name, "spec": copy.deepcopy(dict(spec))}}


def _only(index: kopf.Index[Any, Any], key: Any) -> Any:
    values = list(index.get(key, []))
    return values[0] if values else None


# -- the loop ----------------------------------------------------------------------------


class TrainingController:
    """Reconciles every TrainingJob whenever anything it depends on changes."""

    def __init__(self, api: client.ApiClient, indexes: dict[str, kopf.Index[Any, Any]]) -> None:
        self.api = api
        self.indexes = indexes
        self.wake = asyncio.Event()
        self.ready = False

    def nudge(self) -> None:
        self.ready = True  # the first handler call means kopf has filled the indexes
        self.wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=RESYNC_SECONDS)
            if not self.ready:
                continue
            self.wake.clear()
            await asyncio.sleep(DEBOUNCE_SECONDS)  # one pass for a burst of events
            try:
                await self.reconcile()
            except Exception:
                log.exception("TrainingJob reconcile failed; retrying")
                await asyncio.sleep(1)
                self.wake.set()

    async def reconcile(self) -> None:
        now = dt.datetime.now(dt.UTC)
        tjs: dict[tuple[str, str], dict[str, Any]] = {
            key: _only(self.indexes["trainingjobs"], key) for key in self.indexes["trainingjobs"]
        }
        pods: list[PodInfo] = [
            _only(self.indexes["gpu_pods"], key) for key in self.indexes["gpu_pods"]
        ]
        allocatable = {
            node: _only(self.indexes["gpu_nodes"], node) for node in self.indexes["gpu_nodes"]
        }
        allocatable = {node: gpus for node, gpus in allocatable.items() if gpus > 0}
        bound = [(p.node, p.gpus) for p in pods if p.node and p.phase in ("Pending", "Running")]
        free = queue.free_gpus(allocatable, bound)

        demands = []
        problems: dict[tuple[str, str], tuple[str, str]] = {}
        for key, body in tjs.items():
            if body["metadata"].get("deletionTimestamp"):
                continue
            try:
                problem = await self._ensure_owned(key, body)
            except client.ApiException as error:
                # One job's trouble is reported on that job; the rest carry on.
                log.warning("TrainingJob %s/%s: %s", *key, error.reason)
                problem = (
                    "ReconcileError",
                    f"{error.status} {error.reason}: {_api_message(error)}",
                )
                self.wake.set()
            job_view: status_core.JobView | None = _only(self.indexes["trainingjob_jobs"], key)
            demand = _demand(key, body, job_view, pods, wants=problem is None)
            if problem is None and (reason := queue.never_fits(demand, allocatable)):
                problem = ("Unschedulable", reason)
            if problem is not None:
                problems[key] = problem
            demands.append(demand)

        plan = queue.plan(demands, free)
        for key in plan.admit:
            await self._suspend_job(key, False, "admitted by the GPU queue")
        for key in plan.release:
            await self._suspend_job(key, True, "released its GPUs")

        positions = {key: index + 1 for index, key in enumerate(plan.queued)}
        for demand in demands:
            body = tjs[demand.key]
            job_view = _only(self.indexes["trainingjob_jobs"], demand.key)
            if demand.key in plan.admit and job_view is not None:
                job_view = status_core.JobView(job_view.name, False, job_view.conditions)
            if demand.key in plan.release and job_view is not None:
                job_view = status_core.JobView(job_view.name, True, job_view.conditions)
            observed = status_core.Observed(
                replicas=demand.replicas,
                gpus_per_replica=demand.gpus_per_replica,
                user_suspended=bool(body["spec"].get("suspend")),
                generation=body["metadata"].get("generation"),
                job=job_view,
                pods=tuple(
                    status_core.PodView(p.name, p.node, p.phase, p.gpus, p.deleting)
                    for p in pods
                    if p.namespace == demand.key[0] and p.trainingjob == demand.key[1]
                ),
                queue_position=positions.get(demand.key),
                queue_length=len(plan.queued),
                free_gpus=sum(plan.free_after.values()),
                problem=problems.get(demand.key),
                network_policy=render.network_policy_name(demand.key[1]),
                previous=body.get("status") or {},
            )
            await self._write_status(body, status_core.compute(observed, now))

    async def _ensure_owned(
        self, key: tuple[str, str], body: dict[str, Any]
    ) -> tuple[str, str] | None:
        """Create the Job and the egress policy if missing; fix the policy if it drifted."""
        namespace = key[0]
        wanted_policy = render.render_network_policy(body)
        existing_policy = _only(self.indexes["trainingjob_netpols"], key)
        networking = client.NetworkingV1Api(self.api)
        if existing_policy is None:
            await self._create(
                networking.create_namespaced_network_policy, namespace, wanted_policy
            )
        elif existing_policy["spec"] != wanted_policy["spec"]:
            await kube.call(
                networking.patch_namespaced_network_policy,
                existing_policy["name"],
                namespace,
                {"spec": wanted_policy["spec"]},
            )
        if _only(self.indexes["trainingjob_jobs"], key) is not None:
            return None
        try:
            job = render.render_job(body)
        except render.InvalidTemplate as error:
            return ("InvalidSpec", str(error))
        await self._create(client.BatchV1Api(self.api).create_namespaced_job, namespace, job)
        return None

    async def _create(self, create: Any, namespace: str, manifest: dict[str, Any]) -> None:
        try:
            await kube.call(create, namespace, manifest)
        except client.ApiException as error:
            if error.status != 409:  # already there: the index will show it
                raise

    async def _suspend_job(self, key: tuple[str, str], suspend: bool, why: str) -> None:
        job_view = _only(self.indexes["trainingjob_jobs"], key)
        if job_view is None:
            return
        log.info("Job %s/%s: suspend=%s (%s)", key[0], job_view.name, suspend, why)
        await kube.call(
            client.BatchV1Api(self.api).patch_namespaced_job,
            job_view.name,
            key[0],
            {"spec": {"suspend": suspend}},
        )

    async def _write_status(self, body: dict[str, Any], wanted: dict[str, Any]) -> None:
        current = body.get("status") or {}
        if _without_none(wanted) == current:
            return
        meta = body["metadata"]
        try:
            await kube.call(
                client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status,
                *TJ[:2],
                meta["namespace"],
                TJ[2],
                meta["name"],
                {"status": wanted},
            )
        except client.ApiException as error:
            if error.status == 404:
                return
            raise
        event = status_core.transition_event(current.get("state"), wanted["state"])
        if event is not None:
            ready = next(c for c in wanted["conditions"] if c["type"] == "Ready")
            await events.post(self.api, body, event[0], event[1], ready["message"])
        elif wanted["state"] != "Running" and _problem_changed(current, wanted):
            ready = next(c for c in wanted["conditions"] if c["type"] == "Ready")
            await events.post(self.api, body, "Warning", ready["reason"], ready["message"])


def _problem_changed(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def reason(status: dict[str, Any]) -> str | None:
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        return ready["reason"] if ready else None

    return reason(wanted) in ("InvalidSpec", "Unschedulable") and reason(current) != reason(wanted)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _demand(
    key: tuple[str, str],
    body: dict[str, Any],
    job_view: status_core.JobView | None,
    pods: list[PodInfo],
    wants: bool,
) -> queue.Demand:
    spec = TrainingJob.model_validate(body).spec
    finished = job_view is not None and (job_view.succeeded or job_view.failed)
    bound = sum(
        1
        for p in pods
        if p.namespace == key[0]
        and p.trainingjob == key[1]
        and p.node
        and not p.deleting
        and p.phase in ("Pending", "Running")
    )
    return queue.Demand(
        key=key,
        priority=spec.priority,
        created=dt.datetime.fromisoformat(body["metadata"]["creationTimestamp"]),
        replicas=spec.replicas,
        gpus_per_replica=spec.gpus_per_replica,
        admitted=job_view is not None and not job_view.suspended and not finished,
        # A job whose Job is still being created takes its place in the plan all the same,
        # so a lower-priority job cannot slip in ahead of it between two passes.
        wants_gpus=wants and not spec.suspend and not finished,
        bound_replicas=bound,
    )


# -- kopf wiring -------------------------------------------------------------------------


@kopf.on.startup()
async def start_training_controller(memo: kopf.Memo, **kwargs: Any) -> None:
    # kopf passes the (still filling) indexes to startup handlers; they stay live.
    names = ("trainingjobs", "trainingjob_jobs", "trainingjob_netpols", "gpu_pods", "gpu_nodes")
    controller = TrainingController(kube.api_client(), {name: kwargs[name] for name in names})
    memo["training"] = controller
    memo["training_task"] = asyncio.create_task(controller.run(), name="trainingjob-controller")


@kopf.on.cleanup()
async def stop_training_controller(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("training_task")
    if task is not None:
        task.cancel()


@kopf.on.event(*TJ)
@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels={JOB_LABEL: kopf.PRESENT})
@kopf.on.event("pods", when=_gpu_or_training_pod)
@kopf.on.event("nodes")
def wake_training_controller(memo: kopf.Memo, **_: Any) -> None:
    controller: TrainingController | None = memo.get("training")
    if controller is not None:
        controller.nudge()


def _api_message(error: client.ApiException) -> str:
    try:
        message = json.loads(error.body or "{}").get("message", "")
    except ValueError:
        message = ""
    return str(message or error.body or "")[:1000]
