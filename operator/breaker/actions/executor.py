"""Carrying out the breaker's actions on the cluster, and undoing them exactly.

The pure modules beside this one decide what to change; this one makes the API calls.
Every action is idempotent (applying it twice changes nothing the second time) and
returns what it changed in the form its undo reads; where a crash could separate the
change from that record, the record also travels on the changed object itself, in a
``breaker.dev/`` annotation written in the same patch.

In DryRun the same plans are computed and returned with ``dryRun``, and nothing is sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from breaker import failpoints, kube
from breaker.actions import admin_policy, connections, discovery, egress, kueue, node, pause, quota
from breaker.actions import kin as kin_core
from breaker.api.policy import QuarantineNodeAction, RevokeEgressAction, ServiceRef
from breaker.circuit.views import PodView, WorkloadView
from breaker.constants import (
    KEPT_ANNOTATION,
    NARROWED_FOR,
    ORIGINAL_SELECTOR,
    PAUSED_BY,
    PAUSED_WAS,
    QUARANTINE_LABEL,
)

log = logging.getLogger("breaker.actions")

MANAGED = {"app.kubernetes.io/managed-by": "breaker"}
# The pods of a scrape's namespace the node agent is told about, at most.
MAX_SCRAPERS = 64


@dataclass
class Scene:
    """What one breaker's actions act on, read from the indexes just before acting."""

    api: client.ApiClient
    breaker: str  # the Breaker's name: the quarantine label's value
    namespace: str
    workload: WorkloadView | None
    pods: list[PodView]  # the workload's pods
    netpols: list[dict[str, Any]]  # every NetworkPolicy of the namespace
    quotas: list[dict[str, Any]]  # every ResourceQuota of the namespace
    namespace_pods: list[PodView]  # every pod of the namespace
    # Where Kueue runs: the guarded workload's Kueue Workload (when Kueue manages it), and
    # the namespace's LocalQueues.
    queued: kueue.QueuedWorkload | None = None
    local_queues: list[kueue.LocalQueueView] = field(default_factory=list)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    # When the last action changed something (monotonic): the end of time to contain,
    # which waiting to learn who took the freed GPUs is not part of.
    acted_at: float = 0.0
    # The Services of the namespace (their selector, type and external addresses).
    services: list[dict[str, Any]] = field(default_factory=list)
    # The pod addresses of a namespace (where a scrape of the quarantined pods comes from).
    addresses: Callable[[str], tuple[str, ...]] = lambda _: ()
    # The namespace's breakers whose quarantine is applied (a pod carries one label).
    quarantining: frozenset[str] = frozenset()


# -- revokeEgress -----------------------------------------------------------------------


def quarantine_name(breaker: str) -> str:
    return f"{breaker[:232]}-quarantine"


async def revoke_egress(
    scene: Scene,
    settings: RevokeEgressAction,
    recorded: Mapping[str, Any] | None = None,
    before: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Quarantine the pods and their kin, both ways, and take them out of every other
    policy that lets them out or in.

    ``recorded`` is the quarantine's spec as first written, and ``before`` the record of
    the trip (what the node agent was told to keep, the kin): holding puts back exactly
    those."""
    name = quarantine_name(scene.breaker)
    before = before or {}
    kin = (
        kin_core.Kin.read(before["kin"])
        if "kin" in before
        else kin_core.kin_of(scene.pods, scene.namespace_pods)
    )
    held = held_pods(scene, kin)
    labelled = [{**p.labels, QUARANTINE_LABEL: scene.breaker} for p in held]
    scrape = settings.allow_scrape_from or []
    plan = egress.plan_revocation(
        name, scene.namespace, labelled, scene.netpols, settings.allow_dns, scrape
    )
    policy = plan.quarantine
    policy["metadata"]["labels"] = {**MANAGED, "breaker.dev/breaker": scene.breaker[:63]}
    policy["spec"]["podSelector"] = {"matchLabels": {QUARANTINE_LABEL: scene.breaker}}
    if recorded is not None:
        policy["spec"] = dict(recorded)
    kept = before.get("kept")
    if kept is None:
        services = await _allow_services(scene, settings, policy)
        kept = kept_record(settings, services, time.time())
    changed: dict[str, Any] = {
        "quarantinePolicy": name,
        # Kept so that holding compares the policy with it: an edit is an escape.
        "quarantineSpec": policy["spec"],
        "pods": sorted(p.name for p in held),
        "narrowed": {n: plan.narrowed[n] for n in sorted(plan.narrowed)},
        # What the node agent leaves open of the pods' connections (the rest it cuts).
        "kept": dict(kept),
        # What makes a pod the workload's own: new ones are held too.
        "kin": kin.record(),
    }
    if scene.dry_run:
        return changed
    networking = client.NetworkingV1Api(scene.api)
    await _write_quarantine(scene, networking, name, policy)
    failpoints.hit("egress.quarantine-written")
    await label_pods(scene, held, kept_text(changed["kept"], scene.addresses))
    failpoints.hit("egress.pods-labelled")
    changed.update(await _deny_above_network_policies(scene, settings))
    await _narrow_policies(scene, networking, plan)
    return changed


def held_pods(scene: Scene, kin: kin_core.Kin) -> list[PodView]:
    """The pods the breaker's quarantine holds on this scene (``kin.held_pods``)."""
    return kin_core.held_pods(
        kin, scene.namespace_pods, scene.pods, scene.breaker, scene.quarantining
    )


def kept_record(
    settings: RevokeEgressAction, services: Iterable[str], since: float
) -> dict[str, Any]:
    """What the node agent is to leave alone of the quarantined pods, and what else it does,
    as decided at the trip (the scrape's namespaces are resolved to their pods' addresses
    whenever the pods are labelled: ``kept_text``)."""
    scrape = settings.allow_scrape_from or []
    return {
        "dns": settings.allow_dns,
        "services": sorted(services),
        "inbound": [
            {"from": s.cidr, "ports": list(s.ports or [])} for s in scrape if s.cidr is not None
        ],
        "inboundNamespaces": [
            {"namespace": s.namespace, "ports": list(s.ports or [])}
            for s in scrape
            if s.namespace is not None
        ],
        "since": round(since, 3),
        "killSessions": settings.kill_sessions,
    }


def kept_text(kept: Mapping[str, Any], addresses: Callable[[str], tuple[str, ...]]) -> str:
    """The ``breaker.dev/egress-kept`` annotation for a record's ``kept``: the scrape's
    namespaces resolved to their pods' addresses now."""
    inbound = [
        connections.Inbound(str(i["from"]), tuple(i.get("ports") or ()))
        for i in kept.get("inbound") or []
    ]
    for source in kept.get("inboundNamespaces") or []:
        ports = tuple(source.get("ports") or ())
        # A scrape's namespace runs a few pods; a bound keeps the annotation (and the
        # BreakerHold, which carries it) small whatever runs there.
        for address in addresses(str(source["namespace"]))[:MAX_SCRAPERS]:
            bits = 128 if ":" in address else 32
            inbound.append(connections.Inbound(f"{address}/{bits}", ports))
    since = kept.get("since")
    return connections.kept_annotation(
        bool(kept.get("dns")),
        [str(a) for a in kept.get("services") or []],
        inbound,
        float(since) if isinstance(since, int | float) else 0.0,
        bool(kept.get("killSessions")),
    )


async def _allow_services(
    scene: Scene, settings: RevokeEgressAction, policy: dict[str, Any]
) -> list[str]:
    """Add a rule to the quarantine per allowed Service found; their addresses, to keep."""
    services: list[str] = []
    for service in settings.allow_services or []:
        found = await _service(scene, service)
        if found is not None:
            selector, address = found
            if selector:
                policy["spec"]["egress"].append(_service_rule(service.namespace, selector))
            if address:
                services.append(address)
    return services


async def _write_quarantine(
    scene: Scene, networking: client.NetworkingV1Api, name: str, policy: dict[str, Any]
) -> None:
    """Create the quarantine policy, or put back its spec if it was edited."""
    existing = next((p for p in scene.netpols if p["metadata"]["name"] == name), None)
    if existing is None:
        try:
            await kube.call(networking.create_namespaced_network_policy, scene.namespace, policy)
        except client.ApiException as error:
            if error.status != 409:
                raise
    elif kube.pruned(existing.get("spec")) != kube.pruned(policy["spec"]):
        await kube.call(
            networking.replace_namespaced_network_policy,
            name,
            scene.namespace,
            {**policy, "metadata": {**policy["metadata"], **_version(existing)}},
        )


async def _narrow_policies(
    scene: Scene, networking: client.NetworkingV1Api, plan: egress.Revocation
) -> None:
    """Narrow every other policy that lets the pods out, remembering who holds it narrowed."""
    for policy_name, patch in plan.patches.items():
        original = plan.narrowed[policy_name]
        current = next(p for p in scene.netpols if p["metadata"]["name"] == policy_name)
        annotations = current["metadata"].get("annotations") or {}
        holders = _holders(annotations) | {scene.breaker}
        patch["metadata"] = {
            "annotations": {
                # The first narrowing keeps the original; later ones must not overwrite it.
                ORIGINAL_SELECTOR: annotations.get(ORIGINAL_SELECTOR) or json.dumps(original),
                NARROWED_FOR: ",".join(sorted(holders)),
            }
        }
        await kube.merge_patch(
            networking.patch_namespaced_network_policy, policy_name, scene.namespace, patch
        )
        failpoints.hit("egress.narrowed")


async def live_node_agents(api: client.ApiClient, namespace: str, nodes: Iterable[str]) -> set[str]:
    """The nodes whose node agent holds a live Lease in the operator's namespace (read at
    the trip, after containment: never in its way)."""
    coordination = client.CoordinationV1Api(api)
    now = dt.datetime.now(dt.UTC)

    async def live(node: str) -> bool:
        try:
            lease = await kube.call(
                coordination.read_namespaced_lease, connections.lease_name(node), namespace
            )
        except client.ApiException as error:
            if error.status in (403, 404):
                return False  # none, or the operator may not know: said as uncut
            raise
        spec = lease.spec
        return spec is not None and connections.lease_live(
            spec.renew_time, spec.lease_duration_seconds, now
        )

    wanted = sorted(set(nodes))
    found = await asyncio.gather(*(live(node) for node in wanted))
    return {node for node, ok in zip(wanted, found, strict=True) if ok}


async def label_pods(scene: Scene, pods: Iterable[PodView], kept: str) -> list[str]:
    """Mark the pods quarantined (the quarantine policy selects them by the label) and say
    what of their open connections the node agent keeps (the annotation, in the same
    patch), terminating ones too (a pod kept terminating for days is still the
    tenant's); the pods it marked, or marked again."""
    done = []
    core = client.CoreV1Api(scene.api)
    for pod in pods:
        if pod.labels.get(QUARANTINE_LABEL) == scene.breaker and pod.kept == kept:
            continue
        if pod.phase in ("Succeeded", "Failed"):
            continue  # finished: its address may be another pod's by now
        patch = {
            "metadata": {
                "labels": {QUARANTINE_LABEL: scene.breaker},
                "annotations": {KEPT_ANNOTATION: kept},
            }
        }
        try:
            await kube.merge_patch(core.patch_namespaced_pod, pod.name, scene.namespace, patch)
        except client.ApiException as error:
            if error.status != 404:
                raise
            continue
        done.append(pod.name)
    return done


def quarantine_problem(scene: Scene, record: Mapping[str, Any]) -> str | None:
    """How the quarantine policy differs from what the breaker wrote, or None."""
    name = record.get("quarantinePolicy") or quarantine_name(scene.breaker)
    found = next((p for p in scene.netpols if p["metadata"]["name"] == name), None)
    if found is None:
        return f"NetworkPolicy {name} was deleted"
    wanted = record.get("quarantineSpec")
    if wanted is not None and kube.pruned(found.get("spec")) != kube.pruned(wanted):
        return f"NetworkPolicy {name} was edited"
    return None


def widened(scene: Scene, held: Iterable[PodView]) -> list[str]:
    """The policies that still let a quarantined pod of this breaker out or in (someone
    widened them, or made them)."""
    labelled = [{**p.labels, QUARANTINE_LABEL: scene.breaker} for p in held]
    name = quarantine_name(scene.breaker)
    return sorted(egress.plan_revocation(name, scene.namespace, labelled, scene.netpols).patches)


async def restore_egress(scene: Scene, record: Mapping[str, Any]) -> dict[str, Any]:
    """Unlabel the pods, give narrowed policies back their selectors, drop the quarantine."""
    core = client.CoreV1Api(scene.api)
    networking = client.NetworkingV1Api(scene.api)
    for pod in scene.namespace_pods:
        if pod.labels.get(QUARANTINE_LABEL) != scene.breaker:
            continue
        unlabel = {
            "metadata": {
                "labels": {QUARANTINE_LABEL: None},
                "annotations": {KEPT_ANNOTATION: None},
            }
        }
        await _ignore_404(
            kube.merge_patch(core.patch_namespaced_pod, pod.name, pod.namespace, unlabel)
        )
    restored, kept = [], []
    for policy in scene.netpols:
        annotations = policy["metadata"].get("annotations") or {}
        holders = _holders(annotations)
        if scene.breaker not in holders:
            continue
        name = policy["metadata"]["name"]
        others = holders - {scene.breaker}
        if others:
            # Another breaker's pods still need this policy narrowed.
            patch: dict[str, Any] = {
                "metadata": {"annotations": {NARROWED_FOR: ",".join(sorted(others))}}
            }
            kept.append(name)
        else:
            original = json.loads(annotations.get(ORIGINAL_SELECTOR) or "{}")
            patch = egress.restore_patch(original)
            patch["metadata"] = {"annotations": {ORIGINAL_SELECTOR: None, NARROWED_FOR: None}}
            restored.append(name)
        await _ignore_404(
            kube.merge_patch(
                networking.patch_namespaced_network_policy, name, scene.namespace, patch
            )
        )
    await _ignore_404(
        kube.call(
            networking.delete_namespaced_network_policy,
            record.get("quarantinePolicy") or quarantine_name(scene.breaker),
            scene.namespace,
        )
    )
    # By their fixed names, recorded or not: containment may have re-created them later.
    objects = client.CustomObjectsApi(scene.api)
    if await served(scene.api, admin_policy.ANP_GROUP, admin_policy.ANP_VERSION):
        await _ignore_404(
            kube.call(
                objects.delete_cluster_custom_object,
                admin_policy.ANP_GROUP,
                admin_policy.ANP_VERSION,
                admin_policy.ANP_PLURAL,
                record.get("adminNetworkPolicy")
                or admin_policy.anp_name(scene.namespace, scene.breaker),
            )
        )
    if await served(scene.api, admin_policy.CILIUM_GROUP, admin_policy.CILIUM_VERSION):
        await _ignore_404(
            kube.call(
                objects.delete_namespaced_custom_object,
                admin_policy.CILIUM_GROUP,
                admin_policy.CILIUM_VERSION,
                scene.namespace,
                admin_policy.CILIUM_PLURAL,
                record.get("ciliumPolicy")
                or admin_policy.cilium_policy(scene.namespace, scene.breaker)["metadata"]["name"],
            )
        )
    return {"restored": restored, "stillNarrowedForOthers": kept}


async def served(api: client.ApiClient, group: str, version: str) -> bool:
    """Whether the API server serves this group version (discovered once per process and
    kept until a CRD changes: a trip does not wait on discovery)."""
    return await discovery.served(api, group, version)


async def _deny_above_network_policies(
    scene: Scene, settings: RevokeEgressAction
) -> dict[str, Any]:
    """An AdminNetworkPolicy and a Cilium deny, for the APIs this cluster has."""
    objects = client.CustomObjectsApi(scene.api)
    made: dict[str, Any] = {}
    scrapers = [s.namespace for s in settings.allow_scrape_from or [] if s.namespace]
    anp = admin_policy.admin_network_policy(
        scene.namespace, scene.breaker, settings.allow_dns, scrapers
    )
    if await _create_where_served(
        scene.api,
        admin_policy.ANP_GROUP,
        admin_policy.ANP_VERSION,
        objects.create_cluster_custom_object,
        admin_policy.ANP_PLURAL,
        anp,
    ):
        made["adminNetworkPolicy"] = anp["metadata"]["name"]
    cilium = admin_policy.cilium_policy(scene.namespace, scene.breaker)
    if await _create_where_served(
        scene.api,
        admin_policy.CILIUM_GROUP,
        admin_policy.CILIUM_VERSION,
        objects.create_namespaced_custom_object,
        scene.namespace,
        admin_policy.CILIUM_PLURAL,
        cilium,
    ):
        made["ciliumPolicy"] = cilium["metadata"]["name"]
    return made


async def _create_where_served(
    api: client.ApiClient, group: str, version: str, create: Any, *args: Any
) -> bool:
    """Create (or keep) the object if the API is served; whether it was. A 404 from a kind
    the kept discovery said was served: the API went, so discover again and ask once more."""
    if not await served(api, group, version):
        return False
    try:
        await _create_or_keep(create, group, version, *args)
    except client.ApiException as error:
        if error.status != 404:
            raise
        discovery.forget()
        if await served(api, group, version):
            raise
        return False
    return True


async def _create_or_keep(create: Any, *args: Any) -> None:
    try:
        await kube.call(create, *args)
    except client.ApiException as error:
        if error.status != 409:
            raise


def _holders(annotations: Mapping[str, str]) -> set[str]:
    return {h for h in (annotations.get(NARROWED_FOR) or "").split(",") if h}


async def _service(scene: Scene, service: ServiceRef) -> tuple[dict[str, str], str] | None:
    """A Service's pod selector (for the quarantine policy) and its cluster address (for
    the node agent, which sees the pods' connections before kube-proxy's translation)."""
    try:
        found = await kube.call(
            client.CoreV1Api(scene.api).read_namespaced_service, service.name, service.namespace
        )
    except client.ApiException as error:
        if error.status != 404:
            raise
        scene.notes.append(f"service {service.namespace}/{service.name} not found")
        return None
    spec = found.spec
    selector = dict((spec.selector if spec is not None else None) or {})
    address = spec.cluster_ip if spec is not None and spec.cluster_ip not in (None, "None") else ""
    return selector, address or ""


def _service_rule(namespace: str, selector: Mapping[str, str]) -> dict[str, Any]:
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "podSelector": {"matchLabels": dict(selector)},
            }
        ]
    }


# -- pause ------------------------------------------------------------------------------


async def _patch_workload(scene: Scene, patch: dict[str, Any]) -> None:
    """A merge patch on the guarded workload, whatever its kind (all live under /apis)."""
    assert scene.workload is not None
    kind = pause.KINDS[scene.workload.kind]
    await kube.call(
        client.CustomObjectsApi(scene.api).patch_namespaced_custom_object,
        kind.group,
        kind.version,
        scene.namespace,
        kind.plural,
        scene.workload.name,
        patch,
    )


def queued_by_name(scene: Scene) -> bool:
    """A TrainingJob that hands its queueing to Kueue (spec.queueName): its own
    spec.suspend is refused by its schema, Kueue's Workload is its only switch."""
    workload = scene.workload
    return (
        workload is not None
        and workload.kind == "TrainingJob"
        and bool((workload.body.get("spec") or {}).get("queueName"))
    )


def managed_by_kueue(scene: Scene) -> bool:
    """Kueue runs the workload: it has a Workload, and still carries Kueue's queue label
    (a tenant who takes the label off takes the job out of Kueue's hands)."""
    workload = scene.workload
    if scene.queued is None or workload is None:
        return False
    if workload.kind == "TrainingJob":
        return queued_by_name(scene)
    return kueue.QUEUE_LABEL in workload.labels


def is_paused(scene: Scene) -> bool:
    """Paused as the breaker pauses it: Kueue's Workload deactivated, or the kind's own
    switch. A TrainingJob queued by name whose Workload Kueue has not made yet waits
    suspended, unadmitted: paused."""
    if scene.workload is None:
        return True
    if managed_by_kueue(scene):
        assert scene.queued is not None
        return not scene.queued.active
    if queued_by_name(scene):
        return True
    return scene.workload.paused


async def pause_workload(scene: Scene) -> dict[str, Any]:
    """Suspend (or scale to zero) through the kind's adapter, or deactivate the Kueue
    Workload that runs it; remember what it was."""
    workload = scene.workload
    if workload is None:
        return {"skipped": "the workload is gone"}
    if managed_by_kueue(scene):
        return await _deactivate(scene)
    if queued_by_name(scene):
        # No Workload yet: Kueue holds the Job suspended until it admits one, and the
        # re-assertion deactivates that Workload once it is there.
        return {
            "kind": workload.kind,
            "name": workload.name,
            "skipped": "Kueue has not made its Workload yet: the job waits, unadmitted",
        }
    annotations = workload.body["metadata"]["annotations"]
    patch, record = pause.pause(workload.kind, workload.body)
    if annotations.get(PAUSED_BY) == scene.breaker and PAUSED_WAS in annotations:
        record = json.loads(annotations[PAUSED_WAS])  # paused before: keep the first record
    changed = {"kind": workload.kind, "name": workload.name, **record}
    if scene.dry_run:
        return changed
    patch["metadata"] = {"annotations": {PAUSED_BY: scene.breaker, PAUSED_WAS: json.dumps(record)}}
    await _patch_workload(scene, patch)
    return changed


async def _deactivate(scene: Scene) -> dict[str, Any]:
    """Kueue evicts a deactivated Workload: it suspends the job and frees its quota."""
    assert scene.workload is not None
    assert scene.queued is not None
    patch, record = kueue.deactivate(scene.queued, scene.breaker)
    changed = {"kind": scene.workload.kind, "name": scene.workload.name, **record}
    if not scene.dry_run:
        await _patch_kueue(scene, kueue.WORKLOADS, scene.queued.name, patch)
    return changed


async def _patch_kueue(scene: Scene, plural: str, name: str, patch: dict[str, Any]) -> None:
    await kube.call(
        client.CustomObjectsApi(scene.api).patch_namespaced_custom_object,
        kueue.GROUP,
        kueue.VERSION,
        scene.namespace,
        plural,
        name,
        patch,
    )


async def resume_workload(scene: Scene, record: Mapping[str, Any]) -> dict[str, Any]:
    """Put the pause switch back to what the breaker found, and let go of the workload:
    each of the two switches this breaker turned (the job's own, and Kueue's Workload:
    a job can go into or out of Kueue's hands while the breaker holds it)."""
    if "kueueWorkload" in record or ("was" not in record and managed_by_kueue(scene)):
        restored = await _reactivate(scene, record)
        if scene.workload is not None and scene.workload.paused_by == scene.breaker:
            await _resume_directly(scene, {})
        return restored
    restored = await _resume_directly(scene, record)
    if scene.queued is not None and scene.queued.paused_by == scene.breaker:
        await _reactivate(scene, {})
    return restored


async def _resume_directly(scene: Scene, record: Mapping[str, Any]) -> dict[str, Any]:
    workload = scene.workload
    if workload is None:
        return {"skipped": "the workload is gone"}
    if "was" not in record:
        # Recorded only as pending: the workload's own annotation says what it was, if the
        # pause happened at all.
        annotations = workload.body["metadata"].get("annotations") or {}
        if annotations.get(PAUSED_BY) != scene.breaker or PAUSED_WAS not in annotations:
            return {"skipped": "it was never paused by this breaker"}
        record = json.loads(annotations[PAUSED_WAS])
    patch = pause.resume(workload.kind, record)
    patch["metadata"] = {"annotations": {PAUSED_BY: None, PAUSED_WAS: None}}
    await _ignore_404(_patch_workload(scene, patch))
    return {"restored": {record.get("field", ""): record.get("was")}}


async def _reactivate(scene: Scene, record: Mapping[str, Any]) -> dict[str, Any]:
    """Set the Kueue Workload active again as found: Kueue requeues it."""
    if "was" not in record:
        found = kueue.recorded_pause(scene.queued, scene.breaker) if scene.queued else None
        if found is None:
            return {"skipped": "it was never paused by this breaker"}
        record = found
    name = str(record["kueueWorkload"])
    await _ignore_404(_patch_kueue(scene, kueue.WORKLOADS, name, kueue.reactivate(record)))
    return {"restored": {f"Workload {name} spec.active": record.get("was")}}


# -- reassignGPUs: the quota half (the queue hands the GPUs on) ---------------------------


def freed_gpus(pods: Iterable[PodView]) -> list[dict[str, Any]]:
    per_node: dict[str, int] = {}
    for pod in pods:
        if pod.node and pod.gpus and not pod.deleting and pod.phase in ("Pending", "Running"):
            per_node[pod.node] = per_node.get(pod.node, 0) + pod.gpus
    return [{"node": n, "gpus": per_node[n]} for n in sorted(per_node)]


async def clamp_quota(scene: Scene) -> dict[str, Any]:
    """Cap the namespace's GPU requests at what its other pods hold now."""
    mine = {p.name for p in scene.pods}
    in_use = sum(
        p.gpus
        for p in scene.namespace_pods
        if p.name not in mine and not p.deleting and p.phase in ("Pending", "Running")
    )
    operations, record = quota.plan_clamp(scene.quotas, scene.namespace, in_use, scene.breaker)
    if not scene.dry_run:
        await _run_quota(scene, operations)
    return record


async def hold_queues(scene: Scene, only: Iterable[str] | None = None) -> dict[str, str]:
    """Hold the namespace's Kueue LocalQueues (``only`` these): Kueue admits nothing new
    from them (what runs keeps running). Each queue's stop policy as found, to put back."""
    patches, found = kueue.plan_hold(scene.local_queues, scene.breaker, only)
    if not scene.dry_run:
        for name, patch in patches.items():
            await _ignore_404(_patch_kueue(scene, kueue.LOCAL_QUEUES, name, patch))
    return found


async def release_queues(scene: Scene, held: Mapping[str, str]) -> None:
    for name, patch in kueue.plan_release(held, scene.local_queues, scene.breaker).items():
        await _ignore_404(_patch_kueue(scene, kueue.LOCAL_QUEUES, name, patch))


async def restore_quota(scene: Scene, record: Mapping[str, Any]) -> dict[str, Any]:
    operations, skipped = quota.plan_restore(record, scene.quotas)
    await _run_quota(scene, operations)
    return {"skipped": skipped} if skipped else {}


async def _run_quota(scene: Scene, operations: Iterable[quota.Operation]) -> None:
    core = client.CoreV1Api(scene.api)
    for operation in operations:
        if isinstance(operation, quota.Create):
            try:
                await kube.call(
                    core.create_namespaced_resource_quota, scene.namespace, operation.body
                )
            except client.ApiException as error:
                if error.status != 409:
                    raise
        elif isinstance(operation, quota.Patch):
            await kube.merge_patch(
                core.patch_namespaced_resource_quota,
                operation.name,
                scene.namespace,
                operation.patch,
            )
        else:
            await _ignore_404(
                kube.call(core.delete_namespaced_resource_quota, operation.name, scene.namespace)
            )


# -- quarantineNode ---------------------------------------------------------------------


async def quarantine_nodes(
    scene: Scene, nodes: Iterable[str], settings: QuarantineNodeAction
) -> dict[str, Any]:
    core = client.CoreV1Api(scene.api)
    records: dict[str, Any] = {}
    for name in sorted(set(nodes)):

        def plan(found: Mapping[str, Any], name: str = name) -> dict[str, Any] | None:
            patch, records[name] = node.quarantine(
                found,
                node_holder(scene),
                cordon=settings.cordon,
                taint=settings.taint,
            )
            return None if scene.dry_run else patch

        await _patch_node(scene, core, name, plan)
    return {"nodes": records}


def node_holder(scene: Scene) -> str:
    return node.holder(scene.namespace, scene.breaker)


def nodes_named(scene: Scene, nodes: Iterable[str]) -> dict[str, Any]:
    """A quarantineNode record that names its nodes and nothing more (written ahead, or
    after a failure): a release lets go of whichever of them carry the breaker's mark."""
    return {"nodes": {n: {"breaker": node_holder(scene)} for n in sorted(set(nodes))}}


async def release_nodes(scene: Scene, record: Mapping[str, Any]) -> dict[str, Any]:
    core = client.CoreV1Api(scene.api)
    released = []
    for name, node_record in (record.get("nodes") or {}).items():

        def plan(
            found: Mapping[str, Any], mine: Mapping[str, Any] = node_record
        ) -> dict[str, Any] | None:
            return node.release(found, mine)

        try:
            if await _patch_node(scene, core, name, plan):
                released.append(name)
        except client.ApiException as error:
            if error.status != 404:
                raise
    return {"released": released}


NODE_CONFLICT_ATTEMPTS = 5


async def _patch_node(
    scene: Scene,
    core: client.CoreV1Api,
    name: str,
    plan: Callable[[Mapping[str, Any]], dict[str, Any] | None],
) -> bool:
    """Read a node, plan a patch from it, apply it; whether a patch was applied.

    The patch carries the resourceVersion it was planned on. A node is written all the
    time (its kubelet's status, here kwok's heartbeats every few seconds), so a 409 is
    expected: the node is read and the patch planned again, a few times.
    """
    for attempt in range(NODE_CONFLICT_ATTEMPTS):
        found = kube.to_dict(scene.api, await kube.call(core.read_node, name))
        patch = plan(found)
        if patch is None:
            return False
        try:
            await kube.merge_patch(core.patch_node, name, patch)
            return True
        except client.ApiException as error:
            if error.status != 409 or attempt == NODE_CONFLICT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


# -- helpers ----------------------------------------------------------------------------


def _version(obj: Mapping[str, Any]) -> dict[str, Any]:
    version = obj["metadata"].get("resourceVersion")
    return {"resourceVersion": version} if version else {}


async def _ignore_404(pending: Any) -> None:
    try:
        await pending
    except client.ApiException as error:
        if error.status != 404:
            raise
