"""The TrainingJob controller: kopf indexes in, one reconcile loop, writes out.

kopf keeps in-memory indexes of TrainingJobs, their Jobs and NetworkPolicies, GPU pods and
nodes. Any change to them wakes a single loop, which reconciles every TrainingJob at once
against those indexes (the queue is global: one job's GPUs are another's admission) and
writes only what differs. With nothing changing it makes no API calls: node heartbeats
wake it only when a node's GPUs or readiness change, and failed writes are retried with a
backoff rather than at once. A slow resync guards against a missed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import urllib3
from kubernetes import client

from breaker import events, kopf_tuning, kube, metrics
from breaker.actions import marks
from breaker.actions import quota as quota_core
from breaker.api import quantity
from breaker.api.quantity import pod_gpus
from breaker.api.trainingjob import TrainingJob
from breaker.constants import (
    BREAKERS,
    GPU_RESOURCE,
    GROUP,
    JOB_LABEL,
    PAUSED_BY,
    TRAININGJOBS,
    VERSION,
)
from breaker.controllers import config
from breaker.controllers.reconciler import Reconciler
from breaker.training import queue, render
from breaker.training import status as status_core
from breaker.wake import Changes

log = logging.getLogger("breaker.trainingjobs")

TJ = (GROUP, VERSION, TRAININGJOBS)
RESYNC_SECONDS = 300.0
DEBOUNCE_SECONDS = 0.05
RETRY_SECONDS = 5.0
UNSCHEDULABLE_BACKOFF_SECONDS = 60.0
Key = tuple[str, str]

# Written by the breaker controller. PAUSED_BY: a breaker holds this job paused, whoever
# flips spec.suspend back. A Breaker's status.reclaim (written on a reset, where no tenant
# can write): the job that was handed this job's GPUs gives them back, and this one goes
# first in the queue.
QUOTA_KEY = "requests.nvidia.com/gpu"


# -- what the indexes hold ---------------------------------------------------------------


@config.part("queue")
def _gpu_or_training_pod(spec: kopf.Spec, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> bool:
    return config.serves_queue(memo) and (JOB_LABEL in labels or pod_gpus(dict(spec)) > 0)


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str | None
    phase: str
    gpus: int
    trainingjob: str | None
    deleting: bool
    unschedulable: bool = False


@kopf.index("pods", when=_gpu_or_training_pod)
async def gpu_pods(
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
            namespace=sys.intern(namespace),
            name=name,
            node=sys.intern(spec["nodeName"]) if spec.get("nodeName") else None,
            phase=status.get("phase", "Pending"),
            gpus=pod_gpus(dict(spec)),
            trainingjob=labels.get(JOB_LABEL),
            deleting=meta.get("deletionTimestamp") is not None,
            unschedulable=any(
                c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in status.get("conditions") or []
            ),
        )
    }


def node_gpus(spec: kopf.Spec, status: kopf.Status) -> int:
    """Allocatable GPUs of a node that can take new pods (0 when it cannot)."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    gpus = quantity.gpus((status.get("allocatable") or {}).get(GPU_RESOURCE))
    return gpus if ready and not spec.get("unschedulable") else 0


@kopf.index("nodes", when=config.serves_queue)
async def gpu_nodes(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, int]:
    return {name: node_gpus(spec, status)}


@kopf.index(*TJ, when=config.serves_queue)
async def trainingjobs(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], Any]:
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.index("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT}, when=config.serves_queue)
async def trainingjob_jobs(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    labels: kopf.Labels,
    meta: kopf.Meta,
    **_: Any,
) -> dict[tuple[str | None, str], status_core.JobView]:
    return {
        (namespace, labels[JOB_LABEL]): status_core.JobView(
            name=name,
            suspended=bool(spec.get("suspend")),
            conditions=tuple(copy.deepcopy(status.get("conditions") or [])),
            owner=_controller_uid(meta),
        )
    }


@kopf.index(
    "networking.k8s.io",
    "v1",
    "networkpolicies",
    labels={JOB_LABEL: kopf.PRESENT},
    when=config.serves_queue,
)
async def trainingjob_netpols(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    labels: kopf.Labels,
    meta: kopf.Meta,
    **_: Any,
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {
        (namespace, labels[JOB_LABEL]): {
            "name": name,
            "spec": copy.deepcopy(dict(spec)),
            "owner": _controller_uid(meta),
        }
    }


def _controller_uid(meta: kopf.Meta) -> str | None:
    return next(
        (o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("controller")), None
    )


def _only(index: kopf.Index[Any, Any], key: Any) -> Any:
    values = list(index.get(key, []))
    return values[0] if values else None


# -- the loop ----------------------------------------------------------------------------


class TrainingController:
    """Reconciles every TrainingJob whenever anything it depends on changes."""

    def __init__(self, api: client.ApiClient, indexes: dict[str, kopf.Index[Any, Any]]) -> None:
        self.api = api
        self.indexes = indexes
        self.loop = Reconciler(
            "TrainingJob queue",
            self.one_pass,
            debounce=DEBOUNCE_SECONDS,
            retry=RETRY_SECONDS,
            resync=RESYNC_SECONDS,
        )
        self.written: dict[Key, str] = {}  # the state last written, for transition Events
        self.unschedulable_until: dict[Key, float] = {}
        self.nodes_seen: dict[str, Any] = {}
        # Admissions, for the breaker's GPU hand-off to learn who got the freed GPUs:
        # (monotonic time, wall-clock time, job).
        self.admissions: list[tuple[float, float, Key]] = []
        self.queued: tuple[Key, ...] | None = None  # waiting for GPUs after the latest pass
        self.admitted = asyncio.Condition()
        self.changes = Changes()  # the indexes changed: for waits on the TrainingJobs' status

    async def admitted_since(self, since: float, wait_seconds: float) -> list[Key]:
        """Jobs admitted at or after ``since`` (monotonic time), waiting up to ``wait_seconds``."""
        deadline = time.monotonic() + wait_seconds
        async with self.admitted:
            while True:
                found = [key for at, _, key in self.admissions if at >= since]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.admitted.wait(), timeout=left)

    async def waiting(self) -> list[Key]:
        """Jobs waiting for GPUs after the latest pass; before the first (a restarted
        operator), those whose status says they wait."""
        if self.queued is None:
            index = self.indexes["trainingjobs"]
            return queue.waiting(_only(index, key) or {} for key in index)
        return list(self.queued)

    async def admitted_after(
        self,
        moment: dt.datetime | None,
        wait_seconds: float = 0.0,
        among: Callable[[Key], bool] | None = None,
    ) -> list[Key]:
        """Jobs whose status says they were admitted at or after ``moment`` (those ``among``
        accepts): what a restarted operator knows of the queue's past; and those this queue
        admitted since, before the index shows their status (its next pass no longer counts
        them as waiting, so they must be found here). Waits up to ``wait_seconds`` for the
        first."""
        if moment is None:
            return []
        index = self.indexes["trainingjobs"]
        since = moment.timestamp()

        def found() -> list[Key]:
            admitted = queue.admitted_since((_only(index, key) or {} for key in index), moment)
            admitted += [k for _, at, k in self.admissions if at >= since and k not in admitted]
            return [key for key in admitted if among is None or among(key)]

        return await self.changes.until(found, wait_seconds)

    def nudge(self) -> None:
        self.loop.nudge()  # the first handler call means kopf has filled the indexes
        # kopf updates its indexes before it calls the handlers: they show the change now.
        self.changes.notify()

    async def run(self) -> None:
        await self.loop.run()

    async def one_pass(self) -> bool:
        retry = await self.reconcile()
        metrics.QUEUE_PASSES.inc()
        return retry

    async def reconcile(self) -> bool:
        """One pass over every TrainingJob; True if something failed and needs a retry."""
        now = dt.datetime.now(dt.UTC)
        tjs: dict[Key, dict[str, Any]] = {
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
        reclaims, owed_by = self._reclaims()
        demands, problems, failed = await self._demands(
            tjs, pods, allocatable, now, reclaims, owed_by
        )
        # Jobs with a queueName are Kueue's to admit: their pods count against the free
        # GPUs above, and the plan neither admits nor releases them.
        kueue_jobs = {key for key, body in tjs.items() if (body.get("spec") or {}).get("queueName")}
        ours = [d for d in demands if d.key not in kueue_jobs]
        plan = queue.plan(ours, free, self._quota_room(pods))
        changed, carried = await self._carry_out(plan, demands, tjs, owed_by)
        self.queued = plan.queued
        written = await self._write_statuses(plan, demands, problems, changed, tjs, pods, now)
        for key in list(self.written):
            if key not in tjs:
                del self.written[key]
        return failed or not carried or not written

    async def _demands(
        self,
        tjs: Mapping[Key, dict[str, Any]],
        pods: list[PodInfo],
        allocatable: dict[str, int],
        now: dt.datetime,
        reclaims: dict[Key, Key],
        owed_by: Mapping[Key, Key],
    ) -> tuple[list[queue.Demand], dict[Key, tuple[str, str]], bool]:
        """What each job asks of the queue, the problems found, and whether any failed."""
        failed = False
        demands: list[queue.Demand] = []
        problems: dict[Key, tuple[str, str]] = {}
        for key, body in tjs.items():
            if body["metadata"].get("deletionTimestamp"):
                continue
            try:
                demand, problem = await self._prepare(
                    key, body, pods, allocatable, now, reclaims, key in owed_by
                )
            except Exception as error:  # noqa: BLE001  one job's trouble is its own: logged, retried
                log.warning("TrainingJob %s/%s: %s", *key, error)
                failed = True
                continue
            if problem is not None:
                problems[key] = problem
                failed = failed or problem[0] == "ReconcileError"
            demands.append(demand)
        return demands, problems, failed

    async def _carry_out(
        self,
        plan: queue.Plan,
        demands: list[queue.Demand],
        tjs: Mapping[Key, dict[str, Any]],
        owed_by: Mapping[Key, Key],
    ) -> tuple[dict[Key, bool], bool]:
        """Suspend what the plan releases, admit what it admits, settle GPUs owed back:
        the jobs whose suspension changed, and whether all of it went through."""
        done = True
        changed: dict[Key, bool] = {}
        for key in plan.release:
            if await self._suspend_job(key, True, "released its GPUs"):
                changed[key] = True
            else:
                done = False
        for key in plan.admit:
            if await self._suspend_job(key, False, "admitted by the GPU queue"):
                changed[key] = False
                await self._record_admission(key)
            else:
                done = False
        for demand in demands:
            if demand.first and demand.admitted and demand.bound_replicas >= demand.replicas:
                settled = await self._reclaimed(owed_by[demand.key], tjs[demand.key])
                done = settled and done
        return changed, done

    async def _write_statuses(
        self,
        plan: queue.Plan,
        demands: list[queue.Demand],
        problems: Mapping[Key, tuple[str, str]],
        changed: Mapping[Key, bool],
        tjs: Mapping[Key, dict[str, Any]],
        pods: list[PodInfo],
        now: dt.datetime,
    ) -> bool:
        """Each job's status from what was observed and decided; False if a write failed."""
        done = True
        held_by = self._held_by()
        positions = {key: index + 1 for index, key in enumerate(plan.queued)}
        for demand in demands:
            body = tjs[demand.key]
            job_view = _only(self.indexes["trainingjob_jobs"], demand.key)
            if job_view is not None and demand.key in changed:
                job_view = dataclasses.replace(job_view, suspended=changed[demand.key])
            observed = status_core.Observed(
                replicas=demand.replicas,
                gpus_per_replica=demand.gpus_per_replica,
                user_suspended=bool(body["spec"].get("suspend")),
                generation=body["metadata"].get("generation"),
                job=job_view if problems.get(demand.key, ("",))[0] != "NameConflict" else None,
                pods=tuple(
                    status_core.PodView(p.name, p.node, p.phase, p.gpus, p.deleting)
                    for p in pods
                    if p.namespace == demand.key[0] and p.trainingjob == demand.key[1]
                ),
                queue_position=positions.get(demand.key),
                queue_length=len(plan.queued),
                problem=problems.get(demand.key),
                network_policy=render.network_policy_name(demand.key[1]),
                previous=body.get("status") or {},
                held_by=held_by.get(demand.key[0], ()),
                kueue_queue=(body.get("spec") or {}).get("queueName"),
            )
            try:
                await self._write_status(demand.key, body, status_core.compute(observed, now))
            except (client.ApiException, urllib3.exceptions.HTTPError) as error:
                log.warning("TrainingJob %s/%s: status not written: %s", *demand.key, error)
                done = False
        return done

    def _held_by(self) -> dict[str, tuple[str, ...]]:
        """Per namespace, the breakers whose GPU-quota clamp holds it."""
        quotas = self.indexes.get("breaker_quotas")
        held: dict[str, set[str]] = {}
        if quotas is None:
            return {}
        for key in quotas:
            mark = marks.read(_only(quotas, key) or {}, quota_core.MARK)
            if mark is not None and mark["holders"]:
                held.setdefault(key[0], set()).update(str(h) for h in mark["holders"])
        return {namespace: tuple(sorted(names)) for namespace, names in held.items()}

    def _quota_room(self, pods: list[PodInfo]) -> dict[str, int]:
        """GPUs each namespace's ResourceQuotas still allow (namespaces without one: absent)."""
        quotas = self.indexes.get("breaker_quotas")
        if quotas is None:
            return {}
        hard: dict[str, int] = {}
        for key in quotas:
            quota = _only(quotas, key)
            limit = ((quota or {}).get("spec", {}).get("hard") or {}).get(QUOTA_KEY)
            if limit is None:
                continue
            namespace = key[0]
            hard[namespace] = min(hard.get(namespace, 1 << 30), quantity.gpus(limit))
        used: dict[str, int] = {}
        for pod in pods:
            if pod.namespace in hard and pod.phase in ("Pending", "Running") and not pod.deleting:
                used[pod.namespace] = used.get(pod.namespace, 0) + pod.gpus
        return {ns: max(0, limit - used.get(ns, 0)) for ns, limit in hard.items()}

    async def _record_admission(self, key: Key) -> None:
        async with self.admitted:
            now = time.monotonic()
            kept = [(at, wall, k) for at, wall, k in self.admissions if now - at < 300]
            self.admissions = [*kept, (now, time.time(), key)]
            self.admitted.notify_all()
        self.changes.notify()  # a handoff waiting on admitted_after sees it now

    def _reclaims(self) -> tuple[dict[Key, Key], dict[Key, Key]]:
        """(recipient -> the job it owes, owed job -> the Breaker that recorded the debt)."""
        breakers = self.indexes.get("breaker_breakers")
        reclaims: dict[Key, Key] = {}
        owed_by: dict[Key, Key] = {}
        for key in breakers or ():
            body = _only(breakers, key) if breakers is not None else None
            debt = ((body or {}).get("status") or {}).get("reclaim") or {}
            recipient = str(debt.get("from") or "")
            if not debt.get("job") or "/" not in recipient:
                continue
            owed = (key[0], str(debt["job"]))
            namespace, name = recipient.split("/", 1)
            reclaims[(namespace, name)] = owed
            owed_by[owed] = key
        return reclaims, owed_by

    async def _reclaimed(self, breaker: Key, body: dict[str, Any]) -> bool:
        """The job owed its GPUs has them again: the debt is settled."""
        try:
            await kube.patch_breaker(self.api, breaker, {"status": {"reclaim": None}}, status=True)
        except client.ApiException as error:
            if error.status != 404:
                log.warning("Breaker %s/%s: reclaim not cleared: %s", *breaker, error.reason)
                return False
        log.info("Breaker %s/%s: the GPUs it owed back are back", *breaker)
        await events.post(
            self.api, body, "Normal", "GPUsReclaimed", "got back the GPUs a breaker handed on"
        )
        return True

    async def _prepare(
        self,
        key: Key,
        body: dict[str, Any],
        pods: list[PodInfo],
        allocatable: dict[str, int],
        now: dt.datetime,
        reclaims: dict[Key, Key],
        owed: bool,
    ) -> tuple[queue.Demand, tuple[str, str] | None]:
        """Make sure the job's Job and egress policy exist; say what the queue should know."""
        spec = TrainingJob.model_validate(body).spec
        uid = body["metadata"]["uid"]
        job_view: status_core.JobView | None = _only(self.indexes["trainingjob_jobs"], key)
        if job_view is not None and job_view.owner != uid:
            job_view = None
            problem: tuple[str, str] | None = (
                "NameConflict",
                f"a Job labelled for {key[1]} exists that this TrainingJob does not own; "
                "delete it (or rename the TrainingJob)",
            )
        else:
            try:
                problem = await self._ensure_owned(key, body, job_view)
            except client.ApiException as error:
                problem = (
                    "ReconcileError",
                    f"{error.status} {error.reason}: {kube.api_message(error)}",
                )
        mine = [p for p in pods if p.namespace == key[0] and p.trainingjob == key[1]]
        finished = job_view is not None and (job_view.succeeded or job_view.failed)
        admitted = job_view is not None and not job_view.suspended and not finished
        if admitted and any(p.unschedulable and not p.deleting for p in mine):
            # The scheduler disagrees with the plan (taints, selectors, another pod got
            # there first): give the GPUs back and wait before trying again.
            self.unschedulable_until[key] = now.timestamp() + UNSCHEDULABLE_BACKOFF_SECONDS
        backing_off = self.unschedulable_until.get(key, 0.0) > now.timestamp()
        policy = _only(self.indexes["trainingjob_netpols"], key)
        egress_in_place = policy is not None and policy["owner"] == uid
        if problem is None and not admitted:
            demand_probe = queue.Demand(
                key, 0, now, spec.replicas, spec.gpus_per_replica, False, True
            )
            if reason := queue.never_fits(demand_probe, allocatable):
                problem = ("Unschedulable", reason)
        annotations = body["metadata"].get("annotations") or {}
        held = PAUSED_BY in annotations  # a breaker holds it, whatever spec.suspend says
        creditor = reclaims.get(key)
        # A debt binds while the job owed wants its GPUs back: one contained again (a
        # breaker holds it paused) is owed nothing, whatever a reset recorded before.
        owes = (
            creditor is not None
            and not _is_admitted(self.indexes, creditor)
            and _wants_back(self.indexes, creditor)
        )
        if admitted:
            # Passing API trouble never takes a running job's GPUs away.
            wants = problem is None or problem[0] in ("ReconcileError", "Unschedulable")
            wants = wants and not backing_off
        else:
            wants = problem is None and egress_in_place and job_view is not None and not backing_off
        log.debug(
            "%s/%s: problem=%s admitted=%s egress=%s job=%s backoff=%s",
            *key,
            problem,
            admitted,
            egress_in_place,
            job_view is not None,
            backing_off,
        )
        demand = queue.Demand(
            key=key,
            priority=spec.priority,
            created=dt.datetime.fromisoformat(body["metadata"]["creationTimestamp"]),
            replicas=spec.replicas,
            gpus_per_replica=spec.gpus_per_replica,
            admitted=admitted,
            wants_gpus=wants and not spec.suspend and not finished and not held and not owes,
            bound_replicas=sum(
                1 for p in mine if p.node and not p.deleting and p.phase in ("Pending", "Running")
            ),
            first=owed and not spec.suspend and not held,
        )
        return demand, problem

    async def _ensure_owned(
        self, key: Key, body: dict[str, Any], job_view: status_core.JobView | None
    ) -> tuple[str, str] | None:
        """Create the Job and the egress policy if missing; fix the policy if it drifted."""
        namespace, uid = key[0], body["metadata"]["uid"]
        wanted_policy = render.render_network_policy(body)
        existing_policy = _only(self.indexes["trainingjob_netpols"], key)
        networking = client.NetworkingV1Api(self.api)
        if existing_policy is None:
            if not await self._create(
                networking.create_namespaced_network_policy, namespace, wanted_policy
            ):
                return _conflict("NetworkPolicy", wanted_policy["metadata"]["name"])
        elif existing_policy["owner"] != uid:
            return _conflict("NetworkPolicy", existing_policy["name"])
        elif kube.pruned(existing_policy["spec"]) != kube.pruned(wanted_policy["spec"]):
            await kube.merge_patch(
                networking.patch_namespaced_network_policy,
                existing_policy["name"],
                namespace,
                {"spec": wanted_policy["spec"]},
            )
        if job_view is not None:
            return None
        try:
            job = render.render_job(body)
        except render.InvalidTemplate as error:
            return ("InvalidSpec", str(error))
        if not await self._create(
            client.BatchV1Api(self.api).create_namespaced_job, namespace, job
        ):
            return _conflict("Job", job["metadata"]["name"])
        return None

    async def _create(self, create: Any, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create it; False if something of that name is already there."""
        try:
            await kube.call(create, namespace, manifest)
        except client.ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def _suspend_job(self, key: Key, suspend: bool, why: str) -> bool:
        job_view = _only(self.indexes["trainingjob_jobs"], key)
        if job_view is None:
            return True  # still being created; the next pass admits it
        log.info("Job %s/%s: suspend=%s (%s)", key[0], job_view.name, suspend, why)
        try:
            await kube.merge_patch(
                client.BatchV1Api(self.api).patch_namespaced_job,
                job_view.name,
                key[0],
                {"spec": {"suspend": suspend}},
            )
        except client.ApiException as error:
            log.warning(
                "Job %s/%s: suspend=%s failed: %s", key[0], job_view.name, suspend, error.reason
            )
            return False
        return True

    async def _write_status(self, key: Key, body: dict[str, Any], wanted: dict[str, Any]) -> None:
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
        # The index may lag our own writes: remember what was written, so each transition
        # is announced once.
        before = self.written.get(key, current.get("state"))
        self.written[key] = wanted["state"]
        ready = next(c for c in wanted["conditions"] if c["type"] == "Ready")
        held = next(c for c in wanted["conditions"] if c["type"] == "Queued")
        event = status_core.transition_event(
            before, wanted["state"], held["reason"] == "HeldByBreaker"
        )
        if event is not None:
            await events.post(self.api, body, event[0], event[1], ready["message"])
        elif wanted["state"] != "Running" and _problem_changed(current, wanted):
            await events.post(self.api, body, "Warning", ready["reason"], ready["message"])


def _is_admitted(indexes: dict[str, kopf.Index[Any, Any]], key: Key) -> bool:
    job: status_core.JobView | None = _only(indexes["trainingjob_jobs"], key)
    return job is not None and not job.suspended


def _wants_back(indexes: dict[str, kopf.Index[Any, Any]], key: Key) -> bool:
    """The TrainingJob exists, is not suspended, and no breaker holds it paused."""
    body = _only(indexes["trainingjobs"], key)
    if not body:
        return False
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return not (body.get("spec") or {}).get("suspend") and PAUSED_BY not in annotations


def _conflict(kind: str, name: str) -> tuple[str, str]:
    return (
        "NameConflict",
        f"a {kind} named {name} already exists and this TrainingJob does not own it; "
        "delete it or rename the TrainingJob",
    )


def _problem_changed(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def reason(status: dict[str, Any]) -> str | None:
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        return ready["reason"] if ready else None

    problems = ("InvalidSpec", "Unschedulable", "NameConflict")
    return reason(wanted) in problems and reason(current) != reason(wanted)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


# -- kopf wiring -------------------------------------------------------------------------


@kopf.on.startup()
async def start_training_controller(memo: kopf.Memo, **kwargs: Any) -> None:
    if not config.of(memo).serving.queue:
        return
    # kopf passes the (still filling) indexes to startup handlers; they stay live.
    names = ("trainingjobs", "trainingjob_jobs", "trainingjob_netpols", "gpu_pods", "gpu_nodes")
    # breaker_quotas belongs to the breaker inventory; the queue reads it when it is there.
    shared = ("breaker_quotas", "breaker_breakers")
    indexes = {name: kwargs[name] for name in (*names, *shared) if name in kwargs}
    controller = TrainingController(kube.api_client(), indexes)
    memo["training"] = controller
    # kopf runs the startup handlers in the order the controllers were imported; the
    # breaker controller may have started first, and hands GPUs on through this queue.
    breakers = memo.get("breakers")
    if breakers is not None:
        breakers.training = controller
    memo["training_task"] = asyncio.create_task(controller.run(), name="trainingjob-controller")


@kopf.on.cleanup()
async def stop_training_controller(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("training_task")
    if task is not None:
        task.cancel()


@config.part("queue")
def _owes_gpus(status: kopf.Status, memo: kopf.Memo, **_: Any) -> bool:
    """A Breaker whose reset recorded that a job is owed its GPUs back (status.reclaim)."""
    return config.serves_queue(memo) and bool(status.get("reclaim"))


@kopf.on.event(*TJ, when=config.serves_queue)
# The reset writes the debt after its undos: their events may have woken the queue before
# the debt was there to read, and nothing else would until the resync.
@kopf.on.event(GROUP, VERSION, BREAKERS, when=_owes_gpus)
@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT}, when=config.serves_queue)
@kopf.on.event(
    "networking.k8s.io",
    "v1",
    "networkpolicies",
    labels={JOB_LABEL: kopf.PRESENT},
    when=config.serves_queue,
)
@kopf.on.event("pods", when=_gpu_or_training_pod)
@kopf.on.event("resourcequotas", when=config.serves_queue)
@kopf_tuning.wake_only
async def wake_training_controller(memo: kopf.Memo, **_: Any) -> None:
    _nudge(memo)


def _nudge(memo: kopf.Memo) -> None:
    controller: TrainingController | None = memo.get("training")
    if controller is not None:
        controller.nudge()


kopf_tuning.READY.append(_nudge)  # after events let go while the indexes were filled


@kopf.on.event("nodes", when=config.serves_queue)
async def wake_on_node_capacity(
    memo: kopf.Memo, name: str, type: str | None, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> None:
    """A node's status is rewritten every few minutes; only a change of GPUs or readiness
    matters."""
    controller: TrainingController | None = memo.get("training")
    if controller is None:
        return
    seen = None if type == "DELETED" else node_gpus(spec, status)
    if controller.nodes_seen.get(name, "unseen") != seen:
        controller.nodes_seen[name] = seen
        controller.nudge()
