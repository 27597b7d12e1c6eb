"""The breaker loop: policies to Breakers, one evaluation for all, the machine, and when
to act (what the actions do, and their records, is ``actuator.py``).

One asyncio task does everything for every breaker:

- when a watched object changes (policy, workload, pod, NetworkPolicy, quota, Breaker,
  namespace) it converges at once: Breakers created or removed as policies select
  workloads, admin overrides and resets carried out, and containment enforced (a workload
  unsuspended while its breaker is open is suspended again, a widened NetworkPolicy is
  narrowed again), all from kopf's in-memory indexes;
- every policy's ``prometheus.interval`` a task beside it (``evaluation.Evaluator``)
  evaluates that policy: one instant query per signal for all pods at once
  (``detect/live.py``), the decisions mapped from pods to their workloads, handed to the
  loop, which steps each breaker's state machine. The loop never waits on Prometheus: an
  admin's override or reset is acted on while a query hangs.

Nothing here is per object: no kopf timer or daemon per Breaker. With nothing changing and
nothing firing, the loop makes no API call; the Breaker's status is written only when its
state, signals or actions change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, Literal

import kopf
import pydantic
from kubernetes import client

from breaker import events, failpoints, heap, kopf_tuning, kube, leadership, metrics
from breaker.actions import admission, discovery, executor, kueue
from breaker.actions import evidence as evidence_core
from breaker.actions import kin as kin_core
from breaker.actions.pause import KINDS
from breaker.actions.settings import ActionSettings
from breaker.api.hold import BreakerHoldSpec, KinRule
from breaker.api.policy import SecretKeyRef
from breaker.circuit import machine, plan
from breaker.circuit import records as protocol
from breaker.circuit import status as status_core
from breaker.circuit.ownership import WorkloadKey, workload_of
from breaker.circuit.selection import Policy, Workload
from breaker.circuit.tally import policy_status_patch
from breaker.circuit.views import WorkloadView
from breaker.constants import BREAKERHOLDS, GROUP, KEPT_ANNOTATION, QUARANTINE_LABEL, VERSION
from breaker.controllers import config, inventory
from breaker.controllers.actuator import Actuator, target_nodes
from breaker.controllers.admission import AdmissionParams
from breaker.controllers.disown import Disowner
from breaker.controllers.evaluation import (
    BreakerKey,
    Compiled,
    Evaluator,
    Inputs,
    Policies,
    PolicyKey,
    Trip,
    policy_key,
    policy_label,
)
from breaker.controllers.handoff import Handoffs, RemoteQueue
from breaker.controllers.inventory import items, only
from breaker.controllers.reconciler import Backoff, Reconciler
from breaker.controllers.secrets import read_key
from breaker.controllers.webhooks import Webhooks
from breaker.detect import engine

log = logging.getLogger("breaker.breakers")

DEBOUNCE_SECONDS = 0.02
RETRY_SECONDS = 5.0
RETRY_CAP_SECONDS = 300.0  # a retry that keeps failing backs off to this
RESYNC_SECONDS = 300.0
# How long a handoff waits for the paused pods to go and the queue to admit a job.
HANDOFF_PATIENCE_SECONDS = 600.0
# The quarantine label, as a JSON patch names it.
LABEL_PATH = "/metadata/labels/" + QUARANTINE_LABEL.replace("/", "~1")
KEPT_PATH = "/metadata/annotations/" + KEPT_ANNOTATION.replace("/", "~1")


class BreakerController:
    def __init__(
        self,
        api: client.ApiClient,
        indexes: Mapping[str, kopf.Index[Any, Any]],
        training: Handoffs | None,
        prometheus_url: str,
        operator_namespace: str,
        shard: str | None = None,
        serves: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self.api = api
        self.shard = shard  # this operator's shard's name, when the breakers are sharded
        self.indexes = indexes
        self.actuator = Actuator(api, training, operator_namespace)
        self.actuator.kueue_workloads = lambda: (
            view for _, view in items(self.indexes["breaker_kueue_workloads"])
        )
        self.prometheus_url = prometheus_url
        self.operator_namespace = operator_namespace
        self.loop = Reconciler(
            "breaker",
            self.one_pass,
            debounce=DEBOUNCE_SECONDS,
            retry=RETRY_SECONDS,
            resync=RESYNC_SECONDS,
        )
        self.policies = Policies(prometheus_url, read_secret=self._read_secret)
        self.evaluator = Evaluator(
            self.policies, self._evaluation_inputs, self.loop.nudge, lambda: self.loop.ready
        )
        # The status last written per Breaker: the index may lag our own writes, and acting
        # twice on a stale status would apply the actions twice.
        self.written: dict[BreakerKey, dict[str, Any]] = {}
        self.busy: dict[BreakerKey, asyncio.Task[None]] = {}
        # Each policy's counts and partial-answer note as last written.
        self.policy_status: dict[PolicyKey, tuple[dict[str, int], str | None]] = {}
        # When a breaker whose actions failed may be tried again.
        self.backoff: Backoff[BreakerKey] = Backoff(
            RETRY_SECONDS,
            RETRY_CAP_SECONDS,
            clock=lambda: time.monotonic(),  # this module's
        )
        self.handoff_due: dict[BreakerKey, float] = {}  # next look at an awaited handoff
        # Breakers a reset is letting go of: the admission policy's params leave them out.
        self.releasing: set[BreakerKey] = set()
        self.admission = AdmissionParams(
            api, lambda: inventory.holds(self.indexes.get("breaker_holds", {})), serves
        )
        self.disowner = Disowner(
            api,
            self.written,
            self.busy,
            Backoff(RETRY_SECONDS, RETRY_CAP_SECONDS, clock=lambda: time.monotonic()),
            self.loop.nudge,
        )
        self.webhooks = Webhooks(api, operator_namespace)

    @property
    def training(self) -> Handoffs | None:
        """The queue the freed GPUs go to (see ``Actuator.training``)."""
        return self.actuator.training

    @training.setter
    def training(self, queue: Handoffs | None) -> None:
        self.actuator.training = queue

    def nudge(self) -> None:
        self.loop.nudge()

    @property
    def ready(self) -> bool:
        return self.loop.ready

    async def run(self) -> None:
        evaluating = asyncio.create_task(self.evaluator.run(), name="breaker-evaluation")
        evaluating.add_done_callback(_ended)
        try:
            await self.loop.run()
        finally:
            evaluating.cancel()
            await asyncio.gather(evaluating, return_exceptions=True)

    @property
    def compiled(self) -> dict[PolicyKey, Compiled]:
        return self.policies.compiled

    def _compile_policies(self) -> None:
        self.policies.compile(self._policy_bodies())

    async def _read_secret(self, ref: SecretKeyRef, namespace: str | None, lines: bool) -> str:
        """A policy's Prometheus token or CA (see ``secrets.read_key``)."""
        return await read_key(
            self.api,
            ref,
            namespace,
            self.operator_namespace,
            role="breaker-prometheus",
            lines=lines,
        )

    def _evaluation_inputs(self) -> Inputs:
        """What the evaluator reads, with the policies compiled as they are now."""
        self._compile_policies()
        return Inputs(
            self._breakers_by_policy(), self.indexes["breaker_pods"], self._owner_lookup()
        )

    async def one_pass(self) -> bool:
        """Converge with what the evaluations decided since the last pass; True if
        something is to be retried. Nothing here waits on Prometheus."""
        retry = await self.converge(self.evaluator.take(), {})
        if self.policies.next_due() <= time.monotonic():
            self.evaluator.nudge()  # a new or changed policy: evaluated at once
        if not leadership.ACTIVE["acted"]:
            log.info("first pass done: this operator is the one acting")
            leadership.ACTIVE["acted"] = True
            metrics.ACTIVE.set(1)
            # What the start parsed is freed now: give it back (see heap).
            await heap.trim_now("first pass")
        return retry

    # -- convergence ----------------------------------------------------------------------

    async def converge(
        self, trips: Mapping[BreakerKey, Trip], known: Mapping[PolicyKey, bool]
    ) -> bool:
        """Breakers exist as policies want; each one's machine stepped; containment held.
        True if something failed, or waits to be retried."""
        now = dt.datetime.now(dt.UTC)
        self._compile_policies()
        policies = self._policies()
        workloads = self._workloads()
        namespaces = {key: labels for key, labels in items(self.indexes["breaker_namespaces"])}
        existing = {key: body for key, body in items(self.indexes["breaker_breakers"])}
        # The plan judges each Breaker by the status last written (the index may lag it),
        # and never removes one whose actions are running.
        judged = {
            key: {**body, "status": self.written.get(key) or body.get("status") or {}}
            for key, body in existing.items()
            if key not in self.busy
        }
        wanted = plan.plan_breakers(
            [p for p, _ in policies.values()],
            [_as_workload(w) for w in workloads.values()],
            namespaces,
            judged,
            now,
        )
        failed = await self._create_and_delete(wanted)
        self.disowner.start(existing)
        metrics.GUARDED.set(len(existing))
        metrics.STATES.keep_only(existing.keys())

        for key, body in existing.items():
            if key in self.busy or key in wanted.delete:
                continue
            owning = policy_key(body["spec"]["policyRef"])
            found = self._settings_of(body, owning in policies, self.compiled.get(owning))
            if found is None:
                continue  # its policy is gone: the plan removes it
            actions, settings, compiled = found
            signals_known = known.get(owning, compiled.known if compiled else True)
            status = self.written.get(key) or body.get("status") or {}
            target = body["spec"]["targetRef"]
            workload = workloads.get((key[0], target["kind"], target["name"]))
            if workload is not None and target.get("uid") and workload.uid != target["uid"]:
                # Deleted and created again under its name: the same tenant's workload. The
                # breaker follows it, and holds it as it held the one before.
                followed = await self._follow(key, body, status, workload)
                if followed is None:
                    failed = True
                    continue  # not recorded yet: tried again
                body = followed
                existing[key] = body
            if signals_known and protocol.quiet(status, body, key in trips):
                continue  # Closed, nothing fired, nothing asked: the common case, skipped
            advanced = self._advance(
                key, body, actions, settings, workload, trips.get(key), signals_known, now
            )
            failed = not await self._isolated(key, advanced) or failed
        await self._write_policy_statuses(existing)
        failed = await self.admission.sync(lambda: self._admission_params(existing)) or failed
        await self._sweep(existing)
        self._forget_written(existing)
        self.backoff.keep_only(existing)
        # A breaker waiting to retry its actions brings the loop back when it is due.
        return failed or self.backoff.waiting() or self.disowner.waiting()

    async def _follow(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        status: Mapping[str, Any],
        workload: WorkloadView,
    ) -> dict[str, Any] | None:
        """Point the Breaker at the workload re-created under the guarded name, keep the
        uid it had in status.followed, and say so on both; the body as now written, or
        None when the write failed (tried again on the next pass)."""
        target = body["spec"]["targetRef"]
        followed = list(status.get("followed") or [])
        followed.append({"uid": target["uid"], "until": plan.stamp(dt.datetime.now(dt.UTC))})
        try:
            await kube.patch_breaker(self.api, key, {"spec": {"targetRef": {"uid": workload.uid}}})
            await kube.patch_breaker(
                self.api, key, {"status": {"followed": followed[-10:]}}, status=True
            )
        except client.ApiException as error:
            log.warning("Breaker %s/%s: the re-created %s %s not followed: %s",
                        *key, workload.kind, workload.name, kube.api_problem(error))  # fmt: skip
            return None
        holding = bool(status.get("contained"))
        message = (
            f"{workload.kind} {workload.name} was deleted and created again (uid "
            f"{target['uid']} before, {workload.uid} now): the breaker follows it"
            + (", and holds it as it held the one before" if holding else "")
        )
        log.warning("Breaker %s/%s: %s", *key, message)
        kind: Literal["Normal", "Warning"] = "Warning" if holding else "Normal"
        await events.post(self.api, body, kind, "TargetRecreated", message)
        await events.post(self.api, workload.body, kind, "TargetRecreated", message)
        if key in self.written:
            self.written[key] = {**self.written[key], "followed": followed[-10:]}
        spec = {**body["spec"], "targetRef": {**target, "uid": workload.uid}}
        return {
            **body,
            "spec": spec,
            "status": {**(body.get("status") or {}), "followed": followed[-10:]},
        }

    async def _create_and_delete(self, wanted: plan.BreakerPlan) -> bool:
        """Create and delete the Breakers the plan says; True if an API call failed."""
        failed = False
        objects = client.CustomObjectsApi(self.api)
        for body in wanted.create:
            meta = body["metadata"]
            try:
                await kube.call(
                    objects.create_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    meta["namespace"],
                    "breakers",
                    body,
                )
                log.info("Breaker %s/%s created", meta["namespace"], meta["name"])
            except client.ApiException as error:
                if error.status not in (409, 404):  # exists already; namespace going away
                    log.warning("Breaker %s/%s: %s", meta["namespace"], meta["name"], error)
                    failed = True
        for namespace, name in wanted.delete:
            try:
                await kube.call(
                    objects.delete_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    "breakers",
                    name,
                )
            except client.ApiException as error:
                if error.status != 404:  # gone already
                    log.warning("Breaker %s/%s: not deleted: %s", namespace, name, error)
                    failed = True
                    continue
            self.written.pop((namespace, name), None)
        return failed

    def _settings_of(
        self, body: Mapping[str, Any], has_policy: bool, compiled: Compiled | None
    ) -> tuple[ActionSettings, machine.Settings, Compiled | None] | None:
        """The actions and machine settings a Breaker runs with; None if its policy is gone
        and it holds nothing (the plan removes it)."""
        recorded = body.get("status") or {}
        if not has_policy and not (recorded.get("contained") or recorded.get("actions")):
            return None
        if has_policy and compiled is not None:
            return compiled.actions, compiled.settings, compiled
        # A contained breaker whose policy was deleted still holds, and resets, as it was
        # enforced (or recorded, in DryRun).
        dry_run = bool(recorded.get("dryRun"))
        return ActionSettings(), machine.Settings(dry_run=dry_run), compiled

    async def _isolated(self, key: BreakerKey, work: Coroutine[Any, Any, None]) -> bool:
        """Run one breaker's step; its failure is logged and retried, never the others'."""
        try:
            await work
        except Exception as error:
            if kube.namespace_terminating(error):
                log.debug("Breaker %s/%s: its namespace is being deleted", *key)
                return True
            if isinstance(error, client.ApiException) and error.status in (409, 429):
                # Someone changed the object meanwhile, or the API server sheds load:
                # the next pass works from the newer state.
                log.info("Breaker %s/%s: %s; retrying", *key, kube.api_problem(error))
            else:
                log.exception("Breaker %s/%s: %s", *key, error)
            return False
        return True

    def _admission_params(
        self, existing: Mapping[BreakerKey, dict[str, Any]]
    ) -> dict[str, BreakerHoldSpec]:
        """What the admission policy is to read, per namespace where a breaker holds
        containment (``actions/admission.py``)."""
        holding = []
        for key, body in existing.items():
            status = self.written.get(key) or body.get("status") or {}
            if not status.get("contained") or key in self.releasing:
                continue
            target = body["spec"]["targetRef"]
            applied = {
                r["type"]: r.get("changed") or {}
                for r in status.get("actions") or []
                if not protocol.unfinished(r) and not r.get("dryRun")
            }
            paused = "pause" in applied and not applied["pause"].get("skipped")
            kind = KINDS.get(target["kind"])
            holding.append(
                admission.Holding(
                    key[0],
                    key[1],
                    target["kind"] if paused else None,
                    target["name"] if paused else None,
                    f"{kind.plural}/{target['name']}" if kind is not None else None,
                    self._kin_rule(key[1], applied.get("revokeEgress")),
                )
            )
        namespaces = {held.namespace for held in holding}
        quarantined = [
            admission.Quarantined(namespace, name, breaker, pod.labels)
            for (namespace, breaker), names in self._quarantined()
            if namespace in namespaces
            for name in names
            if (pod := only(self.indexes["breaker_pods"], (namespace, name))) is not None
        ]
        services = (
            (namespace, name, (svc["spec"].get("selector") or {}))
            for (namespace, name), svc in items(self.indexes["breaker_services"])
            if namespace in namespaces
        )
        return admission.params(holding, quarantined, services) if holding else {}

    async def _release(self, key: BreakerKey) -> None:
        """Before a reset resumes the workload: the admission policy's params let go of the
        breaker, so that the pods the workload makes as it resumes are not born quarantined."""
        self.releasing.add(key)
        existing = {k: body for k, body in items(self.indexes["breaker_breakers"])}
        await self.admission.sync(lambda: self._admission_params(existing))

    def _quarantined(self) -> Iterator[tuple[tuple[str, str], list[str]]]:
        """(namespace, Breaker) -> the pods carrying its quarantine label."""
        index = self.indexes["breaker_quarantined"]
        for key in list(index):
            yield key, list(index.get(key, []))

    async def _sweep(self, existing: Mapping[BreakerKey, dict[str, Any]]) -> None:
        """Take the quarantine label off the pods that carry the name of a breaker that
        holds nothing (born quarantined while the admission policy's params still named it,
        as a reset let go): only where the label is still that breaker's, so that a trip
        meanwhile keeps its own."""
        core = client.CoreV1Api(self.api)
        for key, names in self._quarantined():
            if key not in existing or key in self.busy or key in self.releasing:
                continue
            status = self.written.get(key) or existing[key].get("status") or {}
            if status.get("contained"):
                continue
            for name in names:
                unlabel = [
                    {"op": "test", "path": LABEL_PATH, "value": key[1]},
                    {"op": "remove", "path": LABEL_PATH},
                ]
                pod = only(self.indexes["breaker_pods"], (key[0], name))
                if pod is not None and pod.kept is not None:
                    unlabel.append({"op": "remove", "path": KEPT_PATH})
                try:
                    await kube.call(
                        core.patch_namespaced_pod, name, key[0], unlabel,
                        _content_type="application/json-patch+json",
                    )  # fmt: skip
                except client.ApiException as error:
                    if error.status not in (404, 422):  # gone, or labelled anew meanwhile
                        log.warning("pod %s/%s: quarantine label not taken off: %s",
                                    key[0], name, kube.api_problem(error))  # fmt: skip
                    continue
                log.info("pod %s/%s: labelled by Breaker %s, which holds nothing: label "
                         "taken off", key[0], name, key[1])  # fmt: skip

    def _kin_rule(self, breaker: str, quarantine: Mapping[str, Any] | None) -> KinRule | None:
        """What makes a new pod the held workload's own, as its quarantine recorded it, and
        the annotation it is born with (None: the breaker quarantines nothing, or recorded
        no kin: an operator before kin were recorded)."""
        if not quarantine or "kin" not in quarantine or "kept" not in quarantine:
            return None
        kin = kin_core.Kin.read(quarantine["kin"])
        if not kin:
            return None
        try:
            return KinRule(
                breaker=breaker,
                labels=dict(kin.labels),
                service_account=kin.service_account,
                kept=executor.kept_text(quarantine["kept"], self._addresses),
            )
        except pydantic.ValidationError as error:  # a record no operator writes
            log.warning("Breaker %s: its kin not given to the admission policy: %s",
                        breaker, error.errors()[0].get("msg"))  # fmt: skip
            return None

    def _forget_written(self, existing: Mapping[BreakerKey, dict[str, Any]]) -> None:
        """Drop the statuses kept for Breakers that are gone, and where the index has
        caught up with a write (its status is then the one copy kept)."""
        for key in [k for k in self.written if k not in existing]:
            del self.written[key]
        for key in [k for k in self.written if k not in self.busy]:
            if existing[key].get("status") == self.written[key]:
                del self.written[key]

    async def _advance(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        actions: ActionSettings,
        settings: machine.Settings,
        workload: WorkloadView | None,
        trip: Trip | None,
        known: bool,
        now: dt.datetime,
    ) -> None:
        status = self.written.get(key) or body.get("status") or {}
        before = plan.memory(status)
        reset = before.last_reset
        # The incident an admin reset is not a new one: its evidence is spent.
        if trip is not None and reset is not None and _spent(trip, reset, now):
            log.debug("Breaker %s/%s: %s: the incident reset at %s", *key,
                      protocol.reason(trip.decision), reset.isoformat())  # fmt: skip
            trip = None
        seen = machine.Observation(
            now=now,
            tripped=protocol.reason(trip.decision) if trip else None,
            signals_known=known,
            override=body["spec"].get("override"),
            override_reason=body["spec"].get("overrideReason"),
            reset=plan.reset_token(body),
        )
        if not status:
            # A new Breaker: say it guards, once. A trip seen in this same pass is seen
            # again by the next evaluation, and then acted on with everything recorded.
            await self._write(key, body, status, machine.Breaker(), [], settings)
            return
        transition = machine.step(before, seen, settings)
        after = transition.after
        records: list[dict[str, Any]] = list(status.get("actions") or [])
        if transition.effects or transition.changed or before.signals_known != after.signals_known:
            self._spawn(
                key, self._act(key, body, actions, workload, transition, trip, status, settings)
            )
            return
        unfinished = any(map(protocol.unfinished, records))
        if unfinished and after.contained and not settings.dry_run and self._may_retry(key):
            self._spawn(key, self._finish(key, body, actions, workload, after, status, settings))
            return
        failed_undos = protocol.failed_undos(records, after)
        if failed_undos and self._may_retry(key):
            self._spawn(
                key, self._undo_again(key, body, actions, workload, after, status, settings)
            )
            return
        if after.contained and not settings.dry_run:
            await self._complete_handoff(key, body, status, after, records, settings)
            await self._hold(key, body, actions, workload, after, records, status, settings)

    async def _hold(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        actions: ActionSettings,
        workload: WorkloadView | None,
        after: machine.Breaker,
        records: list[dict[str, Any]],
        status: dict[str, Any],
        settings: machine.Settings,
    ) -> None:
        """Undo the tenant's escapes from containment, and say so on both objects; keep
        what still reaches the held pods in the status."""
        scene = self._scene(key, workload, dry_run=False)
        for escape in await self.actuator.hold(scene, actions, workload, after, records):
            log.warning("Breaker %s/%s: %s", *key, escape)
            await events.post(self.api, body, "Warning", "ContainmentRestored", escape)
            if workload is not None:
                await events.post(self.api, workload.body, "Warning", "ContainmentRestored", escape)
        quarantine = next(
            (r for r in records if r["type"] == "revokeEgress" and protocol.applied(r)), None
        )
        if quarantine is None:
            return
        previous = status.get("exposure")
        found = await self.actuator.exposure(key, scene, quarantine.get("changed") or {}, previous)
        if found != previous:
            await self._write(key, body, status, after, records, settings, {"exposure": found})

    def _spawn(self, key: BreakerKey, work: Coroutine[Any, Any, None]) -> None:
        """Run one breaker's actions in the background; it is busy until they end."""
        task = asyncio.create_task(work, name=f"breaker-{key[0]}-{key[1]}")
        self.busy[key] = task
        task.add_done_callback(lambda _: self._done(key))

    def _may_retry(self, key: BreakerKey) -> bool:
        return self.backoff.ready(key)

    def _retry_later(self, key: BreakerKey, what: str, records: list[dict[str, Any]]) -> None:
        """Failed again: said, and the next attempt after RETRY_SECONDS, doubling up to the
        cap (a 403 that an admin must fix is not hammered every few seconds)."""
        delay = self.backoff.failed(key)
        self.loop.retry = True
        why = "; ".join(f"{r['type']}: {r.get('error', 'pending')}" for r in records)
        log.warning("Breaker %s/%s: %s (next try in %.0fs): %s", *key, what, delay, why[:500])

    def _retried(self, key: BreakerKey) -> None:
        """Nothing left to retry for this breaker (done, superseded, or gone)."""
        self.backoff.succeeded(key)

    def _done(self, key: BreakerKey) -> None:
        task = self.busy.pop(key, None)
        self.releasing.discard(key)
        failure = None if task is None or task.cancelled() else task.exception()
        if kube.namespace_terminating(failure):
            log.debug("Breaker %s/%s: its namespace is being deleted", *key)
        elif failure is not None:
            if isinstance(failure, client.ApiException):
                failure_text = kube.api_problem(failure)
            else:
                failure_text = str(failure)
            log.error("Breaker %s/%s: actions failed: %s; retrying", *key, failure_text)
            self.loop.retry = True
        self.loop.wake.set()  # whatever changed meanwhile is looked at again

    async def _act(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        actions: ActionSettings,
        workload: WorkloadView | None,
        transition: machine.Transition,
        trip: Trip | None,
        status: dict[str, Any],
        settings: machine.Settings,
    ) -> None:
        """Carry out a transition's effects, then record it all in one status write."""
        self._retried(key)  # what this transition does supersedes any retry scheduled
        started = time.monotonic()
        after = transition.after
        records: list[dict[str, Any]] = list(status.get("actions") or [])
        extra: dict[str, Any] = {}
        scene = self._scene(key, workload, settings.dry_run)
        history: machine.Transition | None = transition
        for effect in transition.effects:
            if effect in ("apply", "repause"):
                records, status, history = await self._contain(
                    key, body, actions, scene, trip, transition, status, settings, records, extra
                )
                if not settings.dry_run and not any(map(protocol.unfinished, records)):
                    # Only once every action is done: from the evaluation that saw the trip
                    # (or from seeing an admin's ForcedOpen) to the last change an action
                    # made (learning who took the freed GPUs may come later).
                    ended = scene.acted_at or time.monotonic()
                    took = ended - (trip.seen_at if trip is not None else started)
                    extra["timeToContainSeconds"] = round(took, 3)
                    if trip is not None:
                        metrics.TIME_TO_CONTAIN.observe(took)
            elif effect == "resume":
                records = await self.actuator.undo(
                    scene, records, only_types=("pause", "reassignGPUs")
                )
            elif effect == "revert":
                # A handoff still recorded as awaited may have happened meanwhile: the
                # job that got the GPUs owes them back all the same.
                found = await self.actuator.recipients(records, transition.before.last_trip, key[0])
                if found is not None and found[1]:
                    records = protocol.handed(records, *found)
                extra["reclaim"] = debt = protocol.debt(workload, records)
                extra["exposure"] = None  # nothing held: nothing to see past it
                if debt is not None:
                    log.info("Breaker %s/%s: reset: %s/%s is owed its GPUs back by %s",
                             *key, key[0], debt["job"], debt["from"])  # fmt: skip
                await self._release(key)
                records = await self.actuator.undo(scene, records, only_types=None)
        written = await self._write(key, body, status, after, records, settings, extra, history)
        failpoints.hit("reset.recorded" if "revert" in transition.effects else "trip.recorded")
        event = transition.event
        if event is not None:
            message = protocol.event_message(after, records, settings.dry_run)
            log.info("Breaker %s/%s: %s: %s", *key, event[1], message)
            await events.post(self.api, body, event[0], event[1], message)
            if workload is not None:
                await events.post(self.api, workload.body, event[0], event[1], message)
            await self.webhooks.send(actions, body, event[1], written)

    async def _contain(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        actions: ActionSettings,
        scene: executor.Scene,
        trip: Trip | None,
        transition: machine.Transition,
        status: dict[str, Any],
        settings: machine.Settings,
        records: list[dict[str, Any]],
        extra: dict[str, Any],
    ) -> tuple[list[dict[str, Any]], dict[str, Any], machine.Transition | None]:
        """Keep the evidence, write the intents ahead, apply the actions: the records, the
        status last written, and the transition still to record (None once written)."""
        after = transition.after
        history: machine.Transition | None = transition
        evidence = self._evidence(trip, scene, after)
        extra["evidence"] = evidence_core.append(status.get("evidence"), evidence)
        if trip is not None:
            label = policy_label(policy_key(body["spec"]["policyRef"]))
            for signal in trip.decision.signals:
                metrics.TRIPS.labels(label, signal.signal).inc()
        if not settings.dry_run:
            # Write ahead: the trip and what it is about to do are recorded first, so an
            # operator killed halfway finishes the job when it comes back, even if the
            # signals are gone with the paused pods. The Contained condition says
            # InProgress, and the last trip's time to contain goes.
            records = _intend(records, list(actions.order), scene, target_nodes(trip, scene))
            extra["timeToContainSeconds"] = None
            # Contained again, the job is owed nothing: a debt an earlier reset recorded
            # and the queue has not settled yet goes with the trip.
            extra["reclaim"] = None
            await self._write(key, body, status, after, records, settings, extra, transition)
            status, history = self.written.get(key, status), None
            failpoints.hit("trip.intended")
        records = await self.actuator.apply(scene, actions, records, trip, after)
        return records, status, history

    async def _finish(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        actions: ActionSettings,
        workload: WorkloadView | None,
        after: machine.Breaker,
        status: dict[str, Any],
        settings: machine.Settings,
    ) -> None:
        """Carry out actions recorded as pending: an operator stopped halfway through a trip."""
        records: list[dict[str, Any]] = list(status.get("actions") or [])
        scene = self._scene(key, workload, settings.dry_run)
        # Only what is unfinished: in HalfOpen the pause and the handoff are undone on
        # purpose, and finishing a failed quarantine must not pause the job again.
        unfinished = {r["type"] for r in records if protocol.unfinished(r)}
        records = await self.actuator.apply(
            scene, actions, records, None, after, resumed=True, only=unfinished
        )
        failed = [r for r in records if protocol.unfinished(r)]
        extra: dict[str, Any] = {}
        if not failed and after.last_trip is not None:
            # From the trip to the last action, across the restart or the retries.
            took = (dt.datetime.now(dt.UTC) - after.last_trip).total_seconds()
            extra["timeToContainSeconds"] = round(max(took, 0.0), 3)
        written = await self._write(key, body, status, after, records, settings, extra)
        failpoints.hit("trip.recorded")
        if failed:
            # Still short of containment: tried again later (not on every watch event of
            # a busy cluster), and said.
            self._retry_later(key, "containment incomplete", failed)
            return
        self._retried(key)
        finished = ", ".join(r["type"] for r in records)
        message = f"finished: {finished} (decided before an operator restart or an API error)"
        log.info("Breaker %s/%s: %s", *key, message)
        await events.post(self.api, body, "Normal", "ContainmentFinished", message)
        # The trip's own webhook may have died with the operator that decided it: the
        # receiver hears the outcome now.
        await self.webhooks.send(actions, body, "ContainmentFinished", written)

    async def _undo_again(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        actions: ActionSettings,
        workload: WorkloadView | None,
        after: machine.Breaker,
        status: dict[str, Any],
        settings: machine.Settings,
    ) -> None:
        """Undo again what a reset, resume or probation failed to undo (an API error, a
        node written meanwhile): a reset is not done while a taint or a quota is left."""
        records: list[dict[str, Any]] = list(status.get("actions") or [])
        failed = protocol.failed_undos(records, after)
        retried = {r["type"] for r in failed}
        scene = self._scene(key, workload, settings.dry_run)
        kept = await self.actuator.undo(scene, failed, only_types=None)
        records = [r for r in records if r["type"] not in retried] + kept
        await self._write(key, body, status, after, records, settings)
        if kept:
            self._retry_later(key, "still not undone", kept)
            return
        self._retried(key)
        message = f"undone after an earlier failure: {', '.join(sorted(retried))}"
        log.info("Breaker %s/%s: %s", *key, message)
        await events.post(self.api, body, "Normal", "UndoFinished", message)

    async def _complete_handoff(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        status: dict[str, Any],
        after: machine.Breaker,
        records: list[dict[str, Any]],
        settings: machine.Settings,
    ) -> None:
        """A handoff that waited on the paused pods to go: record who got the GPUs once the
        queue admits one of the jobs that waited (looked at once a second at most, for
        HANDOFF_PATIENCE_SECONDS; then the GPUs are taken to have stayed free)."""
        if time.monotonic() < self.handoff_due.get(key, 0.0):
            return
        found = await self.actuator.recipients(records, after.last_trip, key[0])
        if found is None:
            return
        self.handoff_due[key] = time.monotonic() + 1.0
        index, got = found
        waited = dt.datetime.now(dt.UTC) - (after.last_trip or dt.datetime.now(dt.UTC))
        if not got and waited.total_seconds() < HANDOFF_PATIENCE_SECONDS:
            return
        await self._write(key, body, status, after, protocol.handed(records, index, got), settings)
        self.handoff_due.pop(key, None)
        if got:
            message = f"GPUs handed to {', '.join(got)} once the paused pods had gone"
            log.info("Breaker %s/%s: %s", *key, message)
            await events.post(self.api, body, "Normal", "GPUsReassigned", message)

    # -- status ---------------------------------------------------------------------------

    async def _write(
        self,
        key: BreakerKey,
        body: dict[str, Any],
        status: dict[str, Any],
        after: machine.Breaker,
        records: list[dict[str, Any]],
        settings: machine.Settings,
        extra: Mapping[str, Any] | None = None,
        transition: machine.Transition | None = None,
    ) -> dict[str, Any]:
        """Write the status (only if it changed); return it as it now stands."""
        compiled = self.compiled.get(policy_key(body["spec"]["policyRef"]))
        wanted = status_core.wanted(
            body,
            status,
            after,
            records,
            settings,
            dt.datetime.now(dt.UTC),
            status_core.signals_unknown(compiled.error if compiled else None),
            extra,
            transition,
        )
        merged = status_core.merged(status, wanted)
        policy = body["spec"]["policyRef"]["name"]
        # Also when nothing changed: a restarted operator reports the states it finds.
        metrics.set_state(key[0], key[1], policy, after.state, merged.get("signals"))
        if merged == status:
            return merged
        try:
            await kube.patch_breaker(self.api, key, {"status": wanted}, status=True)
        except client.ApiException as error:
            if error.status == 404:
                return merged
            raise
        self.written[key] = merged
        return merged

    async def _write_policy_statuses(self, breakers: Mapping[BreakerKey, dict[str, Any]]) -> None:
        counts: dict[PolicyKey, dict[str, int]] = {}
        for breaker_key, breaker in breakers.items():
            status = self.written.get(breaker_key) or breaker.get("status") or {}
            tally = counts.setdefault(
                policy_key(breaker["spec"]["policyRef"]), {"breakers": 0, "open": 0, "unknown": 0}
            )
            tally["breakers"] += 1
            tally["open"] += status.get("state") not in (None, "Closed", "Disabled")
            tally["unknown"] += status.get("signals") == "Unknown"
        for key, body in self._policy_bodies():
            tally = counts.get(key, {"breakers": 0, "open": 0, "unknown": 0})
            compiled = self.compiled.get(key)
            incomplete = compiled.partial if compiled else None
            # A cluster policy spans the shards: each writes its own count and note, and
            # the sums as far as it has seen them.
            shard = self.shard if key[0] == "ClusterBreakerPolicy" else None
            if shard is None and self.policy_status.get(key) == (tally, incomplete):
                continue
            wanted = policy_status_patch(tally, body.get("status") or {}, shard, incomplete)
            if wanted is None:
                self.policy_status[key] = (tally, incomplete)
                continue
            objects = client.CustomObjectsApi(self.api)
            try:
                if key[0] == "ClusterBreakerPolicy":
                    await kube.call(
                        objects.patch_cluster_custom_object_status,
                        GROUP,
                        VERSION,
                        "clusterbreakerpolicies",
                        key[2],
                        {"status": wanted},
                    )
                else:
                    await kube.call(
                        objects.patch_namespaced_custom_object_status,
                        GROUP,
                        VERSION,
                        key[1],
                        "breakerpolicies",
                        key[2],
                        {"status": wanted},
                    )
                self.policy_status[key] = (tally, incomplete)
            except client.ApiException as error:
                log.warning("%s: status not written: %s", policy_label(key), error.reason)

    # -- reading the indexes ----------------------------------------------------------------

    def _policy_bodies(self) -> Iterable[tuple[PolicyKey, dict[str, Any]]]:
        for (namespace, name), body in items(self.indexes["breaker_policies"]):
            yield ("BreakerPolicy", namespace, name), body
        for name, body in items(self.indexes["breaker_cluster_policies"]):
            yield ("ClusterBreakerPolicy", None, name), body

    def _policies(self) -> dict[PolicyKey, tuple[Policy, dict[str, Any]]]:
        found = {}
        for key, body in self._policy_bodies():
            if body["metadata"].get("deletionTimestamp"):
                continue
            found[key] = (Policy(key[0], key[2], key[1], body["spec"]), body["spec"])
        return found

    def _workloads(self) -> dict[WorkloadKey, WorkloadView]:
        found: dict[WorkloadKey, WorkloadView] = {}
        for index_name in inventory.WORKLOAD_INDEXES:
            index = self.indexes.get(index_name)
            if index is None:
                continue
            for key, view in items(index):
                if not view.deleting:
                    found[key] = view
        return found

    def _breakers_by_policy(self) -> dict[PolicyKey, list[tuple[BreakerKey, dict[str, Any]]]]:
        grouped: dict[PolicyKey, list[tuple[BreakerKey, dict[str, Any]]]] = {}
        for key, body in items(self.indexes["breaker_breakers"]):
            grouped.setdefault(policy_key(body["spec"]["policyRef"]), []).append((key, body))
        return grouped

    def _owner_lookup(self) -> Any:
        indexes = {
            kind: self.indexes[inventory.owner_index(kind)] for kind in inventory.OWNER_INDEXES
        }

        def owner_of(namespace: str, kind: str, name: str) -> Any:
            index = indexes.get(kind)
            return only(index, (namespace, name)) if index is not None else None

        return owner_of

    def _scene(
        self, key: BreakerKey, workload: WorkloadView | None, dry_run: bool
    ) -> executor.Scene:
        namespace = key[0]
        owners = self._owner_lookup()
        kinds = frozenset({workload.kind}) if workload else frozenset()
        namespace_pods = [
            pod for (ns, _), pod in items(self.indexes["breaker_pods"]) if ns == namespace
        ]
        mine = [
            pod
            for pod in namespace_pods
            if workload is not None
            and workload_of(namespace, pod.owner, owners, kinds)
            == (namespace, workload.kind, workload.name)
        ]
        # The Kueue Workload whose owner chain leads to the guarded workload (a Job's own,
        # or its Job's for a TrainingJob).
        queued = next(
            (
                view
                for (ns, _, _), view in items(self.indexes["breaker_kueue_workloads"])
                if ns == namespace
                and workload is not None
                and workload_of(namespace, view.owner, owners, kinds)
                == (namespace, workload.kind, workload.name)
            ),
            None,
        )
        return executor.Scene(
            api=self.api,
            breaker=key[1],
            namespace=namespace,
            workload=workload,
            pods=mine,
            netpols=[p for (ns, _), p in items(self.indexes["breaker_netpols"]) if ns == namespace],
            quotas=[q for (ns, _), q in items(self.indexes["breaker_quotas"]) if ns == namespace],
            namespace_pods=namespace_pods,
            queued=queued,
            local_queues=[
                q for (ns, _), q in items(self.indexes["breaker_local_queues"]) if ns == namespace
            ],
            dry_run=dry_run,
            services=[
                svc for (ns, _), svc in items(self.indexes["breaker_services"]) if ns == namespace
            ],
            addresses=self._addresses,
            quarantining=self._quarantining(namespace),
        )

    def _quarantining(self, namespace: str) -> frozenset[str]:
        """The namespace's breakers whose quarantine is applied."""
        found = set()
        for (ns, name), body in items(self.indexes["breaker_breakers"]):
            if ns != namespace:
                continue
            status = self.written.get((ns, name)) or body.get("status") or {}
            if status.get("contained") and any(
                r.get("type") == "revokeEgress" and not r.get("dryRun")
                for r in status.get("actions") or []
            ):
                found.add(name)
        return frozenset(found)

    def _addresses(self, namespace: str) -> tuple[str, ...]:
        """The addresses of a namespace's running pods (a scrape's sources)."""
        return tuple(
            sorted(
                pod.ip
                for (ns, _), pod in items(self.indexes["breaker_pods"])
                if ns == namespace and pod.ip and not pod.host_network and not pod.deleting
            )
        )

    def _evidence(
        self, trip: Trip | None, scene: executor.Scene, after: machine.Breaker
    ) -> dict[str, Any]:
        pods: list[dict[str, Any]] = [
            {"name": p.name, "node": p.node, "gpus": []} for p in scene.pods
        ]
        now = dt.datetime.now(dt.UTC)
        if trip is None:
            return {
                "time": plan.stamp(now),
                "rule": after.state[:63],
                "signals": [],
                "pods": pods,
            }
        record = evidence_core.capture(trip.decision, trip.detector, pods, now)
        record["time"] = plan.stamp(now)
        return record


def _intend(
    records: list[dict[str, Any]], order: list[str], scene: executor.Scene, nodes: set[str]
) -> list[dict[str, Any]]:
    """The write-ahead records for ``order`` on this scene (see ``records.intend``)."""
    return protocol.intend(
        records,
        order,
        dt.datetime.now(dt.UTC),
        executor.freed_gpus(scene.pods),
        lambda held: executor.nodes_named(scene, nodes | held),
    )


def _ended(task: asyncio.Task[None]) -> None:
    """The evaluation loop must run while the operator does: its end is an error."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the evaluation loop ended: %r", task.exception())


def _as_workload(view: WorkloadView) -> Workload:
    return Workload(view.api_version, view.kind, view.namespace, view.name, view.uid, view.labels)


# -- kopf wiring -------------------------------------------------------------------------


@kopf.on.startup()
async def start_breaker_controller(memo: kopf.Memo, **kwargs: Any) -> None:
    settings = config.of(memo)
    if not settings.serving.breakers():
        return
    indexes = {name: kwargs[name] for name in inventory.INDEX_NAMES if name in kwargs}
    api = kube.api_client()
    # The queue runs here (its controller started before this one, or hands itself over
    # when it starts after) or in another operator.
    training: Handoffs | None = memo.get("training")
    controller = BreakerController(
        api,
        indexes,
        training if settings.serving.queue else RemoteQueue(api),
        settings.prometheus_url,
        settings.operator_namespace,
        settings.serving.shard,
        settings.serving.breakers,
    )
    memo["breakers"] = controller
    memo["breakers_task"] = asyncio.create_task(controller.run(), name="breaker-loop")


@kopf.on.cleanup()
async def stop_breaker_controller(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("breakers_task")
    if task is not None:
        task.cancel()
    controller: BreakerController | None = memo.get("breakers")
    if controller is not None:
        await controller.webhooks.close()
        if isinstance(controller.training, RemoteQueue):
            await controller.training.close()


@kopf.on.event(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", when=config.serves_breakers
)
async def rediscover_apis(**_: Any) -> None:
    """A CRD came, went or changed: the deny APIs a revocation uses may have too."""
    discovery.forget()


def _spent(trip: Trip, reset: dt.datetime, now: dt.datetime) -> bool:
    return engine.predates(trip.decision, trip.detector, reset.timestamp(), now.timestamp())


def _nudge(memo: kopf.Memo) -> None:
    controller: BreakerController | None = memo.get("breakers")
    if controller is not None:
        controller.nudge()


@kopf_tuning.wake_only
async def _wake(memo: kopf.Memo, **_: Any) -> None:
    _nudge(memo)


kopf_tuning.READY.append(_nudge)  # after events let go while the indexes were filled


for _resource in dict.fromkeys(
    (
        (GROUP, VERSION, "breakerpolicies"),
        (GROUP, VERSION, "clusterbreakerpolicies"),
        (GROUP, VERSION, "breakers"),
        (GROUP, VERSION, BREAKERHOLDS),  # one deleted or edited by hand is put back
        ("namespaces",),
        ("networking.k8s.io", "v1", "networkpolicies"),
        ("resourcequotas",),
        ("pods",),
        ("services",),
        *inventory.OWNER_INDEXES.values(),
        (kueue.GROUP, kueue.VERSION, kueue.WORKLOADS),
        (kueue.GROUP, kueue.VERSION, kueue.LOCAL_QUEUES),
        *((k.group, k.version, k.plural) for k in KINDS.values()),
    )
):
    kopf.on.event(
        *_resource, id=f"wake-breakers-{'.'.join(_resource)}", when=config.serves_breakers
    )(_wake)
