"""What a breaker's actions do to the cluster, and the record of each: apply them (a trip,
or finishing one an earlier operator began), undo them (newest first), hold them against
a tenant's escapes, and follow the GPU hand-off to the job the queue admits.

The actuator changes objects and returns records; it writes no Breaker status and posts
no Event. The breaker controller (``breakers.py``) decides when to call it, writes what it
returns ahead of and after the work (the record protocol of ``circuit/records.py``), and
says what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client

from breaker import failpoints, kube, metrics
from breaker.actions import connections, executor, kueue
from breaker.actions import kin as kin_core
from breaker.actions.settings import ActionSettings
from breaker.circuit import machine, plan
from breaker.circuit import records as protocol
from breaker.circuit.views import PodView, WorkloadView
from breaker.constants import QUARANTINE_LABEL, SESSIONS_ANNOTATION
from breaker.controllers.evaluation import Trip
from breaker.controllers.handoff import Handoffs

log = logging.getLogger("breaker.breakers")

# How often the exec sessions into held pods are read from the node agents' Leases.
SESSIONS_SECONDS = 5.0
# How long the trip itself waits for the queue to admit a job on the freed GPUs: kwok's
# pods go at once; a real node's take their grace period, and then the recipient is
# recorded when the queue admits it (the controller's _complete_handoff), not in the trip.
HANDOFF_WAIT_SECONDS = 1.0


class Actuator:
    def __init__(
        self, api: client.ApiClient, training: Handoffs | None, operator_namespace: str
    ) -> None:
        self.api = api
        # The queue the freed GPUs go to: this operator's (set when its controller starts,
        # which may be after this one) or a RemoteQueue watching another operator's.
        self.training = training
        self.operator_namespace = operator_namespace
        # When each breaker's exec sessions are read from the node agents' Leases next.
        self.sessions_due: dict[tuple[str, str], float] = {}
        # Kueue's Workloads as the indexes hold them (where Kueue runs, Kueue hands the
        # freed quota on, and the breaker records whom it admitted).
        self.kueue_workloads: Callable[[], Iterable[kueue.QueuedWorkload]] = tuple

    async def apply(
        self,
        scene: executor.Scene,
        actions: ActionSettings,
        records: list[dict[str, Any]],
        trip: Trip | None,
        after: machine.Breaker,
        resumed: bool = False,
        only: set[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Apply what is not done yet; ``resumed``: finishing an earlier operator's trip;
        ``only``: these action types and no others."""
        done = {r["type"]: r for r in records if protocol.applied(r)}
        pending = {r["type"]: r for r in records if protocol.unfinished(r)}
        # Left over from an undo that failed: applied again from scratch (the objects'
        # marks make that safe), on the nodes it held as well as the trip's.
        leftover = {r["type"]: r for r in records if protocol.undo_failed(r)}
        handoff_since = time.monotonic()
        tripped_at = dt.datetime.now(dt.UTC)
        order = list(actions.order)
        wanted = [a for a in order if only is None or a in only]
        if "reassignGPUs" in wanted and "reassignGPUs" not in done:
            # The quota is clamped before the pause frees anything, so the tenant's own
            # queued jobs cannot take the GPUs back in between.
            # What the trip freed is counted before the pause; an earlier attempt (before a
            # restart, or failed) counted it already, and the pods may be gone since.
            intended = (pending.get("reassignGPUs") or {}).get("changed") or {}
            freed = intended.get("freed")
            freed = executor.freed_gpus(scene.pods) if freed is None else freed
            # Likewise the ClusterQueue: once the Workload is deactivated it holds none.
            queue = intended.get("clusterQueue")
            done["reassignGPUs"] = await self._record(
                "reassignGPUs", scene, self._clamp(scene, freed, queue), known={"freed": freed}
            )
            failpoints.hit("trip.quota-clamped")
        for action in wanted:
            if action in ("captureEvidence", "notify") or (
                action in done and action != "reassignGPUs"
            ):
                continue  # evidence is kept apart; notify goes out with the Event
            if action == "revokeEgress":
                done[action] = await self._record(
                    action,
                    scene,
                    executor.revoke_egress(scene, actions.revoke_egress),
                )
                await self._cut_by(scene, done[action])
            elif action == "pause":
                done[action] = await self._record(action, scene, executor.pause_workload(scene))
            elif action == "reassignGPUs" and "clusterQueue" in (done[action].get("changed") or {}):
                pass  # after the pause, whatever the order (below)
            elif action == "reassignGPUs":
                intended = pending.get("reassignGPUs") if resumed else None
                await self.handed_to(scene, done[action], handoff_since, intended)
            elif action == "quarantineNode":
                ahead = ((pending.get(action) or {}).get("changed") or {}).get("nodes")
                nodes = set(ahead) if ahead is not None else target_nodes(trip, scene)
                nodes |= set(((leftover.get(action) or {}).get("changed") or {}).get("nodes") or {})
                # Failed, it still names its nodes: a reset releases whichever of them
                # carry this breaker's mark.
                named = executor.nodes_named(scene, nodes)
                done[action] = await self._record(
                    action,
                    scene,
                    executor.quarantine_nodes(scene, nodes, actions.quarantine_node),
                    known=named,
                )
            failpoints.hit(f"trip.{action}")
        kueue_handoff = done.get("reassignGPUs")
        if "reassignGPUs" in wanted and "clusterQueue" in (kueue_handoff or {}).get("changed", {}):
            # Kueue hands the quota on once the Workload is deactivated; the tenant's
            # queues are held only then (see _hold_queues).
            assert kueue_handoff is not None
            await self._hold_queues(scene, kueue_handoff)
            await self.admitted_by_kueue(scene, kueue_handoff, after.last_trip or tripped_at)
        return [done[a] for a in protocol.ordered(done, order)]

    async def _cut_by(self, scene: executor.Scene, record: dict[str, Any]) -> None:
        """Say in the record on which nodes a node agent cuts the pods' open connections,
        and where none does (they may outlive the quarantine there)."""
        changed = record.get("changed")
        if changed is None or "skipped" in changed:
            return
        nodes = {p.node for p in scene.pods if p.node}
        try:
            live = await executor.live_node_agents(self.api, self.operator_namespace, nodes)
        except client.ApiException as error:
            log.warning("Breaker %s/%s: node agents unknown: %s", scene.namespace, scene.breaker,
                        kube.api_problem(error))  # fmt: skip
            live = set()
        changed["connections"] = connections.coverage(nodes, live)

    async def _clamp(
        self, scene: executor.Scene, freed: list[dict[str, Any]], queue: str | None
    ) -> dict[str, Any]:
        clamped: dict[str, Any] = {"freed": freed, "quota": await executor.clamp_quota(scene)}
        if executor.managed_by_kueue(scene):
            assert scene.queued is not None
            # Kueue hands the quota on, by its own rules: the breaker records whom to.
            clamped["by"] = "Kueue"
            clamped["clusterQueue"] = queue or scene.queued.cluster_queue or ""
        return clamped

    async def _hold_queues(self, scene: executor.Scene, record: dict[str, Any]) -> None:
        """Hold the tenant's LocalQueues, once the Workload is deactivated: Kueue v0.17
        does not requeue its ClusterQueue's waiting workloads when a Workload of a queue
        already held is evicted, so holding first would leave the freed quota idle."""
        changed = record.setdefault("changed", {})
        try:
            changed["localQueues"] = await executor.hold_queues(scene)
        except client.ApiException as error:
            record["error"] = kube.api_problem(error, limit=4096)
            log.warning("Breaker %s/%s: holding the LocalQueues failed: %s",
                        scene.namespace, scene.breaker, record["error"])  # fmt: skip

    async def admitted_by_kueue(
        self, scene: executor.Scene, record: dict[str, Any], since: dt.datetime
    ) -> None:
        """Wait (briefly) for Kueue to admit a workload into the quota the trip freed;
        until it does, the record awaits the ClusterQueue and the breaker controller looks
        again (``recipients``)."""
        changed = record.setdefault("changed", {})
        queue = changed.get("clusterQueue")
        if scene.dry_run or not queue:
            changed.setdefault("to", [])
            return
        deadline = time.monotonic() + HANDOFF_WAIT_SECONDS
        while True:
            got = kueue.admitted_since(self.kueue_workloads(), queue, since, scene.namespace)
            if got or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        changed["to"] = got
        record["appliedAt"] = plan.stamp(dt.datetime.now(dt.UTC))
        if got:
            changed.pop("awaiting", None)
        else:
            changed["awaiting"] = [f"ClusterQueue/{queue}"]

    async def handed_to(
        self,
        scene: executor.Scene,
        record: dict[str, Any],
        since: float,
        intended: Mapping[str, Any] | None,
    ) -> None:
        """Wait (briefly) for the queue to admit the job that takes the freed GPUs."""
        changed = record.setdefault("changed", {})
        training = self.training
        if training is not None and intended is not None and changed.get("freed"):
            # Finishing after a restart: the queue hands the GPUs on (or did, before the
            # restart); its first pass may not have run yet, so give it the usual wait.
            after = plan.parse_stamp(intended.get("appliedAt"))
            admitted = await training.admitted_after(
                after, HANDOFF_WAIT_SECONDS, among=lambda key: key[0] != scene.namespace
            )
            changed["to"] = _names(admitted)[:1]
            record["appliedAt"] = plan.stamp(dt.datetime.now(dt.UTC))
            if changed["to"]:
                return
            # Not yet: as on a trip without a restart, the jobs that wait are awaited and
            # whoever the queue admits is recorded when it does (a reset owes it back).
            waiting = await _others_waiting(training, scene.namespace)
            if waiting:
                changed["awaiting"] = _names(waiting)
            else:
                scene.notes.append("no queued TrainingJob took the freed GPUs")
            return
        waiting = await _others_waiting(training, scene.namespace) if training is not None else []
        if training is None or scene.dry_run or not waiting or not changed.get("freed"):
            # Nobody (of another tenant) waits: the GPUs stay free for whoever comes next.
            changed.setdefault("to", [])
            return
        admitted = [
            k for k in await training.admitted_since(since, HANDOFF_WAIT_SECONDS) if k in waiting
        ]
        changed["to"] = _names(admitted)
        record["appliedAt"] = plan.stamp(dt.datetime.now(dt.UTC))
        if not admitted:
            # The paused pods may take their grace period to go (a real node's do): the
            # GPUs are free only then. Who gets them is recorded when the queue says.
            changed["awaiting"] = _names(waiting)

    async def recipients(
        self, records: list[dict[str, Any]], since: dt.datetime | None, namespace: str
    ) -> tuple[int, list[str]] | None:
        """(the awaited handoff's record, the awaited jobs the queue admitted since the
        trip), or None when no handoff awaits."""
        index = next(
            (
                i
                for i, r in enumerate(records)
                if r["type"] == "reassignGPUs"
                and protocol.applied(r)
                and (r.get("changed") or {}).get("awaiting")
            ),
            None,
        )
        if index is None or since is None:
            return None
        changed = records[index]["changed"]
        if changed.get("clusterQueue"):
            got = kueue.admitted_since(
                self.kueue_workloads(), changed["clusterQueue"], since, namespace
            )
            return index, got
        if self.training is None:
            return None
        awaited = set(records[index]["changed"]["awaiting"])
        admitted = await self.training.admitted_after(since)
        return index, [f"{ns}/{name}" for ns, name in admitted if f"{ns}/{name}" in awaited]

    async def _record(
        self,
        action: str,
        scene: executor.Scene,
        work: Any,
        known: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run one action and record it; a failed one keeps ``known`` for its next attempt
        (every failed action is tried again while the breaker holds)."""
        record: dict[str, Any] = {"type": action}
        try:
            record["changed"] = await work
            metrics.ACTIONS.labels(action, "apply", "ok").inc()
        except client.ApiException as error:
            if known:
                record["changed"] = dict(known)
            record["error"] = kube.api_problem(error, limit=4096)
            metrics.ACTIONS.labels(action, "apply", "error").inc()
            log.warning(
                "Breaker %s/%s: %s failed: %s",
                scene.namespace,
                scene.breaker,
                action,
                record["error"],
            )
        record["appliedAt"] = plan.stamp(dt.datetime.now(dt.UTC))
        scene.acted_at = time.monotonic()
        if scene.dry_run:
            record["dryRun"] = True
        return record

    async def undo(
        self,
        scene: executor.Scene,
        records: list[dict[str, Any]],
        only_types: tuple[str, ...] | None,
    ) -> list[dict[str, Any]]:
        """Undo the recorded actions, newest first; return those still applied."""
        kept: list[dict[str, Any]] = []
        for record in reversed(records):
            action, changed = record["type"], record.get("changed") or {}
            if only_types is not None and action not in only_types:
                kept.insert(0, record)
                continue
            if record.get("dryRun"):
                continue
            if protocol.unfinished(record):
                # Written ahead, or failed partway: the objects' marks say what happened.
                changed = _undo_pending(action, changed, scene)
            try:
                if action == "revokeEgress":
                    await executor.restore_egress(scene, changed)
                elif action == "pause":
                    await executor.resume_workload(scene, changed)
                elif action == "reassignGPUs":
                    await executor.restore_quota(scene, changed.get("quota") or {})
                    await executor.release_queues(scene, changed.get("localQueues") or {})
                elif action == "quarantineNode":
                    await executor.release_nodes(scene, changed)
                metrics.ACTIONS.labels(action, "undo", "ok").inc()
                failpoints.hit(f"reset.{action}")
            except client.ApiException as error:
                metrics.ACTIONS.labels(action, "undo", "error").inc()
                # What to undo is resolved now: the record is no longer pending, so it is
                # only ever undone again, never finished as if the trip were under way.
                record = {k: v for k, v in record.items() if k != "pending"}
                record |= {
                    "changed": changed,
                    "error": f"undo failed: {error.status} {error.reason}",
                }
                kept.insert(0, record)
                log.warning(
                    "Breaker %s/%s: undo %s failed: %s",
                    scene.namespace,
                    scene.breaker,
                    action,
                    error,
                )
        return kept

    async def hold(
        self,
        scene: executor.Scene,
        actions: ActionSettings,
        workload: WorkloadView | None,
        after: machine.Breaker,
        records: list[dict[str, Any]],
    ) -> list[str]:
        """Containment holds whatever the tenant does: undo an escape as soon as it is seen,
        and say what was undone (one line per escape). With the workload gone, its kin
        are still held."""
        # What was really applied: a DryRun record changed nothing and holds nothing.
        done = {
            r["type"]: r
            for r in records
            if not r.get("error") and not r.get("dryRun") and not r.get("pending")
        }
        escapes: list[str] = []
        held = "pause" in done and after.state in plan.PAUSED_STATES
        # Paused is what matters: another breaker holding it paused is not an escape.
        if held and workload is not None and not executor.is_paused(scene):
            await executor.pause_workload(scene)
            if executor.managed_by_kueue(scene):
                assert scene.queued is not None
                escapes.append(
                    f"Kueue Workload {scene.queued.name} was activated: deactivated again"
                )
            else:
                escapes.append(f"{workload.kind} {workload.name} was resumed: paused again")
        if "revokeEgress" in done:
            escapes += await self._hold_quarantine(scene, actions, done["revokeEgress"])
        if "reassignGPUs" in done and after.state in plan.PAUSED_STATES:
            clamp = await executor.clamp_quota(dataclasses.replace(scene, dry_run=True))
            if clamp.get("lowered") or clamp.get("created"):
                await executor.clamp_quota(scene)
                escapes.append("the namespace's GPU quota was raised: clamped again")
            changed = done["reassignGPUs"].get("changed") or {}
            held_queues = changed.get("localQueues")
            reopened = (
                kueue.released(held_queues, scene.local_queues, scene.breaker)
                if held_queues is not None
                else []
            )
            if reopened:
                await executor.hold_queues(scene, only=reopened)
                escapes.append(f"LocalQueue {', '.join(reopened)} admitted again: held again")
        return escapes

    async def _hold_quarantine(
        self, scene: executor.Scene, actions: ActionSettings, done: Mapping[str, Any]
    ) -> list[str]:
        """The quarantine as the trip made it: its policy, the other policies narrowed, and
        every pod of the workload and its kin labelled, with what the node agent keeps."""
        record = done.get("changed") or {}
        before = {"kept": record.get("kept") or _kept(actions), **_kin(record, scene)}
        held = held_pods(scene, record)
        problem = executor.quarantine_problem(scene, record)
        opened = executor.widened(scene, held)
        if problem or opened:
            await executor.revoke_egress(
                scene, actions.revoke_egress, record.get("quarantineSpec"), before
            )
            escapes = [f"{problem}: restored"] if problem else []
            if opened:
                escapes.append(
                    f"NetworkPolicy {', '.join(opened)} let the quarantined pods out or in: "
                    "narrowed again"
                )
            return escapes
        text = executor.kept_text(before["kept"], scene.addresses)
        at_trip = set(record.get("pods") or [])
        unlabelled = [p for p in held if p.labels.get(QUARANTINE_LABEL) != scene.breaker]
        rewritten = [p for p in held if p not in unlabelled and p.kept != text]
        # The scrape's pods moved (their addresses are in the annotation): written again,
        # not an escape.
        quiet = {p.name for p in rewritten if _same_but_scrapers(p.kept, text)}
        escapes = []
        lost = [p.name for p in unlabelled if p.name in at_trip]
        new = [p.name for p in unlabelled if p.name not in at_trip]
        labelled = set(await executor.label_pods(scene, [*unlabelled, *rewritten], text))
        if lost := [name for name in lost if name in labelled]:
            escapes.append(
                f"pods {', '.join(lost)} lost the {QUARANTINE_LABEL} label: labelled again"
            )
        if new := [name for name in new if name in labelled]:
            escapes.append(
                f"pods {', '.join(new)}, new, of the held workload or its kin, were not "
                "quarantined: quarantined"
            )
        if written := [p.name for p in rewritten if p.name in labelled and p.name not in quiet]:
            escapes.append(
                f"pods {', '.join(written)}: what the node agent is to keep of their "
                "connections was not what the breaker says: written again"
            )
        return escapes

    async def exposure(
        self,
        key: tuple[str, str],
        scene: executor.Scene,
        record: Mapping[str, Any],
        previous: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        """What still reaches the held pods past the quarantine, for the status: Services
        that expose them outside the cluster, and the exec sessions into them the node
        agents report (read from their Leases every SESSIONS_SECONDS at most)."""
        held = held_pods(scene, record)
        found: dict[str, Any] = {}
        services = kin_core.exposing(scene.services, [p.labels for p in held])
        if services:
            found["services"] = services
        before = list((previous or {}).get("sessions") or [])
        sessions = before
        if time.monotonic() >= self.sessions_due.get(key, 0.0):
            self.sessions_due[key] = time.monotonic() + SESSIONS_SECONDS
            sessions = await self._sessions(scene, held, before)
        if sessions:
            found["sessions"] = sessions
        return found or None

    async def _sessions(
        self, scene: executor.Scene, held: list[PodView], before: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The exec sessions into the held pods as their nodes' agents report them; those
        listed before and gone now are kept, as ended."""
        coordination = client.CoordinationV1Api(self.api)
        names = {f"{p.namespace}/{p.name}": p for p in held}
        now: list[dict[str, Any]] = []
        for node in sorted({p.node for p in held if p.node}):
            try:
                lease = await kube.call(
                    coordination.read_namespaced_lease,
                    connections.lease_name(node),
                    self.operator_namespace,
                )
            except client.ApiException as error:
                if error.status in (403, 404):
                    continue  # no agent there (the status says so of open connections)
                raise
            text = ((lease.metadata and lease.metadata.annotations) or {}).get(SESSIONS_ANNOTATION)
            for pod, listed in connections.sessions(text).items():
                if pod in names:
                    now += [{"pod": names[pod].name, "node": node, **s} for s in listed]
        seen = {(s["pod"], s.get("pid"), s.get("started")) for s in now}
        gone = [
            {**s, "ended": True}
            for s in before
            if (s.get("pod"), s.get("pid"), s.get("started")) not in seen
        ]
        return sorted(gone + now, key=lambda s: (str(s.get("started")), str(s.get("pod"))))[
            -connections.MAX_SESSIONS :
        ]


def held_pods(scene: executor.Scene, record: Mapping[str, Any]) -> list[PodView]:
    """The pods a revokeEgress record holds now (``kin.held_pods``)."""
    return executor.held_pods(scene, kin_core.Kin.read(_kin(record, scene)["kin"]))


def _kin(record: Mapping[str, Any], scene: executor.Scene) -> dict[str, Any]:
    """The kin a record holds (one written before kin were recorded: the workload's pods')."""
    if "kin" in record:
        return {"kin": record["kin"]}
    return {"kin": kin_core.kin_of(scene.pods, scene.namespace_pods).record()}


def _same_but_scrapers(found: str | None, wanted: str) -> bool:
    """Two egress-kept annotations that differ in the scrape's addresses alone."""
    try:
        a, b = json.loads(found or ""), json.loads(wanted)
    except ValueError:
        return False
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    return {k: v for k, v in a.items() if k != "inbound"} == {
        k: v for k, v in b.items() if k != "inbound"
    }


def _kept(actions: ActionSettings) -> dict[str, Any]:
    """What a record written before the node agent existed would have kept."""
    return {"dns": actions.revoke_egress.allow_dns, "services": []}


def _undo_pending(action: str, intended: dict[str, Any], scene: executor.Scene) -> dict[str, Any]:
    """What to undo of an action that may or may not have happened (the operator stopped
    between deciding and recording it): the marks on the objects say what it did."""
    if action == "reassignGPUs":
        names = [q["metadata"]["name"] for q in scene.quotas]
        queues = {
            q.name: q.held_was
            for q in scene.local_queues
            if q.held_by == scene.breaker and q.held_was is not None
        }
        return {
            **intended,
            "quota": {"breaker": scene.breaker, "held": names},
            "localQueues": queues,
        }
    return intended  # egress and pause undo by name and annotation; nodes were named ahead


def nodes_named_by(trip: Trip | None) -> set[str]:
    """Nodes that node-scoped signals of the trip point at (their Hostname label)."""
    if trip is None:
        return set()
    return {
        f.labels["Hostname"]
        for f in trip.decision.signals
        if trip.detector.signal(f.signal).scope == "node" and f.labels.get("Hostname")
    }


def target_nodes(trip: Trip | None, scene: executor.Scene) -> set[str]:
    """The nodes quarantineNode acts on: those the node signals name, else the pods'."""
    return nodes_named_by(trip) or {p.node for p in scene.pods if p.node}


async def _others_waiting(training: Handoffs, namespace: str) -> list[tuple[str, str]]:
    """The jobs of other namespaces that wait for GPUs (a tenant's own are not its debtors)."""
    return [key for key in await training.waiting() if key[0] != namespace]


def _names(keys: Iterable[tuple[str, str]]) -> list[str]:
    return [f"{namespace}/{name}" for namespace, name in keys]
