"""The breaker loop's logic, with the API, kopf's indexes and time faked (``tests/fakes.py``).

A tenant's TrainingJob ``rl`` (one pod on 8 GPUs) is guarded by the Enforce policy
``guard``; a trip is handed to ``converge`` as an evaluation would hand it. What the
operator changed is read back from the fake store, what it recorded from the Breaker's
status, as an admin would with kubectl. The cluster suite keeps what needs the real thing
(packets, kill -9, the queue binding pods).
"""

from __future__ import annotations

import asyncio
import json
import re

import kopf
import pytest

from breaker import failpoints
from breaker.api import conditions
from breaker.api.policy import BreakerPolicySpec
from breaker.constants import (
    GROUP,
    PAUSED_BY,
    PAUSED_WAS,
    QUARANTINE_LABEL,
    RESET_ANNOTATION,
    VERSION,
)
from breaker.controllers import breakers, inventory
from breaker.controllers.breakers import BreakerController
from breaker.controllers.evaluation import Trip
from breaker.detect import engine
from tests.crash_points import RESET_POINTS, TRIP_POINTS
from tests.fakes import BREAKER_INDEXES, Clock, FakeCluster, FakeIndexes, FakeQueue, Json

pytestmark = pytest.mark.usefixtures("fresh_discovery")

NS, OTHER = "tenant-a", "tenant-b"
BREAKER = "rl-guard"  # <workload>-<policy>
KEY = (NS, BREAKER)
TRAININGJOBS = (GROUP, "trainingjobs")
BREAKERS = (GROUP, "breakers")
NETPOLS = ("networking.k8s.io", "networkpolicies")
QUOTAS = ("", "resourcequotas")
PODS = ("", "pods")
EVENTS = ("", "events")
HOLDS = (GROUP, "breakerholds")
POLICY_SPEC: Json = {
    "targets": {"kinds": ["TrainingJob"]},
    "signals": [
        {"name": "pool", "preset": "mining-pool-egress", "for": "0s", "severity": "critical"}
    ],
    "mode": "Enforce",
    "actions": [{"type": t} for t in ("captureEvidence", "revokeEgress", "pause", "reassignGPUs")],
}


class Crash(Exception):
    """The operator died here (a failpoint the test armed)."""


class CrashAt:
    """A ``failpoints.hit`` that stops the actions the first time they reach ``point``."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.reached = False

    def __call__(self, name: str) -> None:
        if name == self.point and not self.reached:
            self.reached = True
            raise Crash(name)


def scene() -> FakeCluster:
    """Two tenants' namespaces; tenant-a's job ``rl`` running on gpu-1 under an allow-all
    egress policy; the policy that guards it."""
    c = FakeCluster()
    for ns in (NS, OTHER):
        c.put(("", "namespaces"), {"metadata": {"name": ns, "labels": {"team": ns}}})
    c.put(("", "nodes"), {"metadata": {"name": "gpu-1"}, "spec": {}})
    job = c.put(
        TRAININGJOBS,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "metadata": {"name": "rl", "namespace": NS, "labels": {"team": "agents"}},
            "spec": {"replicas": 1, "gpusPerReplica": 8, "suspend": False},
        },
    )
    owner = {"kind": "TrainingJob", "name": "rl", "uid": job["metadata"]["uid"]}
    batch = c.put(
        ("batch", "jobs"),
        {"metadata": {"name": "rl", "namespace": NS, "ownerReferences": [_ctl(owner)]}},
    )
    c.put(
        PODS,
        {
            "metadata": {
                "name": "rl-0",
                "namespace": NS,
                "labels": {"app": "rl"},
                "ownerReferences": [
                    _ctl({"kind": "Job", "name": "rl", "uid": batch["metadata"]["uid"]})
                ],
            },
            "spec": {
                "nodeName": "gpu-1",
                "containers": [{"name": "t", "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
            },
            "status": {"phase": "Running"},
        },
    )
    c.put(
        NETPOLS,
        {
            "metadata": {"name": "allow-all", "namespace": NS},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
        },
    )
    c.put(
        (GROUP, "breakerpolicies"),
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BreakerPolicy",
            "metadata": {"name": "guard", "namespace": NS},
            "spec": POLICY_SPEC,
        },
    )
    return c


def _ctl(ref: Json) -> Json:
    return {"apiVersion": "v1", "controller": True, **ref}


class Operator:
    """One running operator over the cluster: a BreakerController, its indexes, a queue."""

    def __init__(self, cluster: FakeCluster, queue: FakeQueue, clock: Clock) -> None:
        self.cluster, self.clock = cluster, clock
        self.indexes = FakeIndexes(cluster)
        self.controller = BreakerController(
            cluster.api, self.indexes, queue, "http://prometheus.invalid", "breaker-system"
        )

    async def converge(self, trip: bool = False, since: float = 0.0) -> bool:
        """One pass of the loop (after kopf's watches caught up), and the actions it set
        off run to their end. A trip's signal has held ``since`` (seconds since the epoch)."""
        await self.indexes.refresh()
        trips = {KEY: self.trip(since)} if trip else {}
        retry = await self.controller.converge(trips, {})
        while self.controller.busy:
            await asyncio.gather(*self.controller.busy.values(), return_exceptions=True)
        if self.controller.disowner.task is not None:
            await self.controller.disowner.task
        await self.indexes.refresh()
        return retry or self.controller.disowner.waiting()

    async def guarding(self) -> None:
        """The Breaker created, then its first status (Closed) written."""
        await self.converge()
        await self.converge()
        assert status(self.cluster)["state"] == "Closed"

    def trip(self, since: float = 0.0) -> Trip:
        """What an evaluation of ``guard`` would hand over for tenant-a's pod."""
        detector = engine.compile_policy(BreakerPolicySpec.model_validate(POLICY_SPEC))
        labels = {"namespace": NS, "pod": "rl-0", "port": "3333"}
        firing = engine.Firing("pool", 4.0, labels, since=since, key=(NS, "rl-0"))
        decision = engine.Decision("anyCritical", (firing,))
        return Trip(decision, detector, self.clock.monotonic())


def status(cluster: FakeCluster) -> Json:
    found = cluster.get(BREAKERS, NS, BREAKER)
    assert found is not None
    result: Json = found.get("status") or {}
    return result


def records(cluster: FakeCluster) -> dict[str, Json]:
    return {r["type"]: r for r in status(cluster).get("actions") or []}


def job(cluster: FakeCluster) -> Json:
    found = cluster.get(TRAININGJOBS, NS, "rl")
    assert found is not None
    return found


def reasons(cluster: FakeCluster) -> list[str]:
    return [e["reason"] for e in cluster.all(EVENTS, NS)]


def status_writes(cluster: FakeCluster) -> list[Json]:
    """Every status the operator sent for the Breaker, in order."""
    return [
        c.body["status"]
        for c in cluster.requests("PATCH", f"/breakers/{BREAKER}/status$")
        if c.status == 200
    ]


def quarantines(cluster: FakeCluster) -> list[Json]:
    return [p for p in cluster.all(NETPOLS, NS) if p["metadata"]["name"].endswith("-quarantine")]


@pytest.fixture
def cluster() -> FakeCluster:
    return scene()


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
async def tripped(cluster: FakeCluster, queue: FakeQueue, clock: Clock) -> Operator:
    """The job contained: the Breaker Open and every action applied."""
    operator = Operator(cluster, queue, clock)
    await operator.guarding()
    await operator.converge(trip=True)
    assert status(cluster)["state"] == "Open"
    return operator


# -- a trip under Enforce -------------------------------------------------------------------


async def test_an_earlier_versions_owner_reference_is_dropped_until_it_holds(
    cluster: FakeCluster, queue: FakeQueue, clock: Clock
) -> None:
    """A Breaker an earlier version made owned by its job loses the reference; a failed
    drop is said in the Owned condition and retried after its backoff."""
    operator = Operator(cluster, queue, clock)
    await operator.guarding()
    legacy = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "name": "rl",
        "uid": job(cluster)["metadata"]["uid"],
        "blockOwnerDeletion": False,
    }
    cluster.edit(BREAKERS, NS, BREAKER, {"metadata": {"ownerReferences": [legacy]}})
    cluster.fail("PATCH", f"/breakers/{BREAKER}$", 500)
    assert await operator.converge(), "a retry is due"
    owned = conditions.find(status(cluster)["conditions"], "Owned")
    assert owned is not None
    assert (owned["status"], owned["reason"]) == ("True", "ReleaseFailed")
    assert "TrainingJob/rl" in owned["message"]
    assert 'ownerReferences":null' in owned["message"], "how to drop it by hand"
    await operator.converge(trip=True)  # its writes keep the condition while it holds
    assert conditions.find(status(cluster)["conditions"], "Owned") is not None
    assert status(cluster)["state"] == "Open"

    clock.advance(breakers.RETRY_SECONDS)
    assert not await operator.converge()
    found = cluster.get(BREAKERS, NS, BREAKER)
    assert found is not None
    assert "ownerReferences" not in found["metadata"]
    assert conditions.find(status(cluster)["conditions"], "Owned") is None
    assert len(cluster.requests("PATCH", f"/breakers/{BREAKER}$")) == 2


async def test_the_admission_params_follow_what_the_breaker_holds(
    tripped: Operator, cluster: FakeCluster
) -> None:
    """Tripped: the namespace's params name the breaker and its quarantined pod; reset:
    they are gone."""
    await tripped.converge()  # the pass the end of the actions wakes
    params = cluster.get(HOLDS, NS, "breaker-containment")
    assert params is not None
    spec = params["spec"]
    assert {k: spec[k] for k in ("breakers", "pods", "scaled", "workloads")} == {
        "breakers": [BREAKER],
        "pods": {"rl-0": BREAKER},
        "scaled": {},
        "workloads": {"trainingjobs/rl": BREAKER},
    }
    # A new pod with the job's labels is born quarantined, with what the
    # node agent is to keep.
    (kin,) = spec["kin"]
    assert kin["breaker"] == BREAKER
    assert kin["labels"] == {"app": "rl"}
    assert json.loads(kin["kept"])["dns"] is True
    assert cluster.get(HOLDS, OTHER, "breaker-containment") is None
    # A quarantined pod that goes leaves the params at the next pass (the spec replaced,
    # not merged).
    del cluster.objects[PODS][(NS, "rl-0")]
    await tripped.converge()
    params = cluster.get(HOLDS, NS, "breaker-containment")
    assert params is not None
    assert params["spec"]["pods"] == {}
    cluster.edit(BREAKERS, NS, BREAKER, {"spec": {"reset": "admin"}})
    await tripped.converge()
    await tripped.converge()
    assert status(cluster)["state"] == "Closed"
    assert cluster.get(HOLDS, NS, "breaker-containment") is None


async def test_params_deleted_by_hand_are_put_back_at_the_pass_the_watch_wakes(
    tripped: Operator, cluster: FakeCluster
) -> None:
    """The params are watched: one deleted by hand is written again at the next pass, and
    nothing lists them, at start or at rest."""
    await tripped.converge()  # written
    await tripped.converge()  # and seen by the watch
    assert cluster.get(HOLDS, NS, "breaker-containment") is not None
    del cluster.objects[HOLDS][(NS, "breaker-containment")]
    await tripped.converge()
    assert cluster.get(HOLDS, NS, "breaker-containment") is not None
    assert not cluster.requests("GET", "/breakerholds")
    woken_by = [h.id for h in kopf.get_default_registry()._watching.get_all_handlers()]
    assert f"wake-breakers-{GROUP}.{VERSION}.breakerholds" in woken_by


async def test_without_the_breakerhold_crd_containment_goes_on_and_the_loop_does_not_spin(
    cluster: FakeCluster, queue: FakeQueue, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade that skipped `crds/`: the params cannot be kept, which is said once per
    ABSENT_SECONDS; the trip is applied all the same, and the loop is not kept busy
    retrying."""
    cluster.fail("POST", "/breakerholds$", 404, times=1000)
    operator = Operator(cluster, queue, clock)
    await operator.guarding()
    await operator.converge(trip=True)
    assert not await operator.converge()
    assert status(cluster)["state"] == "Open"
    assert job(cluster)["spec"]["suspend"] is True
    assert len(cluster.requests("POST", "/breakerholds$")) == 1
    said = [m for r in caplog.records if "BreakerHolds are not served" in (m := r.getMessage())]
    assert len(said) == 1
    assert "kubectl apply --server-side -f crds/" in said[0]


async def test_no_breaker_is_owned_by_its_workload(tripped: Operator, cluster: FakeCluster) -> None:
    found = cluster.get(BREAKERS, NS, BREAKER)
    assert found is not None
    assert "ownerReferences" not in found["metadata"]
    assert not cluster.requests("PATCH", f"/breakers/{BREAKER}$"), "nothing to drop"


async def test_a_trip_opens_the_breaker_and_records_each_action_it_applied(
    tripped: Operator, cluster: FakeCluster
) -> None:
    found = status(cluster)
    assert found["trips"] == 1
    assert found["contained"] is True
    assert found["reason"].startswith("anyCritical: pool=4")
    done = records(cluster)
    assert list(done) == ["revokeEgress", "pause", "reassignGPUs"]
    assert not any(r.get("pending") or r.get("error") for r in done.values())

    # revokeEgress: the quarantine exists once, the pod is in it, allow-all no longer lets it out.
    (quarantine,) = quarantines(cluster)
    assert done["revokeEgress"]["changed"]["quarantinePolicy"] == quarantine["metadata"]["name"]
    assert quarantine["spec"]["podSelector"] == {"matchLabels": {QUARANTINE_LABEL: BREAKER}}
    pod = cluster.get(PODS, NS, "rl-0")
    assert pod is not None
    assert pod["metadata"]["labels"][QUARANTINE_LABEL] == BREAKER
    assert "allow-all" in done["revokeEgress"]["changed"]["narrowed"]
    allow_all = cluster.get(NETPOLS, NS, "allow-all")
    assert allow_all is not None
    assert allow_all["spec"]["podSelector"] != {}

    # pause: the job suspended, and what it was before kept on it.
    assert job(cluster)["spec"]["suspend"] is True
    annotations = job(cluster)["metadata"]["annotations"]
    assert annotations[PAUSED_BY] == BREAKER
    assert json.loads(annotations[PAUSED_WAS])["was"] is False
    assert done["pause"]["changed"]["was"] is False

    # reassignGPUs: 8 GPUs freed on gpu-1, the tenant's quota clamped to what it still holds.
    assert done["reassignGPUs"]["changed"]["freed"] == [{"node": "gpu-1", "gpus": 8}]
    assert done["reassignGPUs"]["changed"]["to"] == []  # nobody waited
    (clamp,) = cluster.all(QUOTAS, NS)
    assert clamp["spec"]["hard"]["requests.nvidia.com/gpu"] == "0"
    assert done["reassignGPUs"]["changed"]["quota"]["created"] == [clamp["metadata"]["name"]]

    assert "BreakerTripped" in reasons(cluster)
    assert found["evidence"]  # captured before acting


async def test_the_records_are_written_ahead_of_the_actions_then_completed(
    tripped: Operator, cluster: FakeCluster
) -> None:
    writes = [w for w in status_writes(cluster) if w.get("actions")]
    intended, *_, final = writes
    assert intended["state"] == "Open"
    assert [(r["type"], r.get("pending")) for r in intended["actions"]] == [
        ("revokeEgress", True),
        ("pause", True),
        ("reassignGPUs", True),
    ]
    # Nothing was changed before the intention was recorded.
    first_write = cluster.calls.index(
        next(c for c in cluster.calls if c.body is not None and c.body.get("status") == intended)
    )
    changes = [
        i
        for i, c in enumerate(cluster.calls)
        if c.method in ("POST", "PATCH", "PUT", "DELETE")
        and re.search("/(networkpolicies|trainingjobs|resourcequotas|pods)(/|$)", c.path)
    ]
    assert min(changes) > first_write
    assert not any(r.get("pending") for r in final["actions"])
    contained = next(c for c in final["conditions"] if c["type"] == "Contained")
    assert contained["status"] == "True"


# -- crash points -------------------------------------------------------------------------


@pytest.mark.parametrize("point", TRIP_POINTS["gpus"])
async def test_an_operator_stopped_anywhere_in_a_trip_is_finished_once_by_the_next(
    point: str,
    cluster: FakeCluster,
    queue: FakeQueue,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = Operator(cluster, queue, clock)
    await first.guarding()

    failpoint = CrashAt(point)
    with monkeypatch.context() as armed:
        armed.setattr(failpoints, "hit", failpoint)
        await first.converge(trip=True)
    assert failpoint.reached
    assert status(cluster)["state"] == "Open"  # the write-ahead came first

    second = Operator(cluster, queue, clock)  # a restart: nothing kept but the cluster
    await second.converge()  # no trip seen: the signals went with the paused pods
    await second.converge()

    done = records(cluster)
    assert list(done) == ["revokeEgress", "pause", "reassignGPUs"]
    assert not any(r.get("pending") or r.get("error") for r in done.values()), done
    assert len(quarantines(cluster)) == 1
    assert len(cluster.requests("POST", "/networkpolicies$")) == 1
    assert job(cluster)["spec"]["suspend"] is True
    # A second pause would have recorded "was: true", and a reset would then leave it paused.
    assert json.loads(job(cluster)["metadata"]["annotations"][PAUSED_WAS])["was"] is False
    assert done["pause"]["changed"]["was"] is False
    assert len(cluster.all(QUOTAS, NS)) == 1
    assert status(cluster)["trips"] == 1
    assert reasons(cluster).count("BreakerTripped") <= 1
    if point != "trip.recorded":  # stopped short of the last write: the next one finished
        assert "ContainmentFinished" in reasons(cluster)


# -- hold ---------------------------------------------------------------------------------


async def test_a_job_the_tenant_resumes_while_open_is_suspended_again(
    tripped: Operator, cluster: FakeCluster
) -> None:
    cluster.edit(TRAININGJOBS, NS, "rl", {"spec": {"suspend": False}})
    await tripped.converge()
    assert job(cluster)["spec"]["suspend"] is True
    assert "ContainmentRestored" in reasons(cluster)
    assert json.loads(job(cluster)["metadata"]["annotations"][PAUSED_WAS])["was"] is False
    assert status(cluster)["state"] == "Open"

    patches = len(cluster.requests("PATCH", "/trainingjobs/rl$"))
    await tripped.converge()  # held: nothing more to do
    assert len(cluster.requests("PATCH", "/trainingjobs/rl$")) == patches


async def test_a_deleted_quarantine_is_put_back(tripped: Operator, cluster: FakeCluster) -> None:
    (quarantine,) = quarantines(cluster)
    del cluster.objects[NETPOLS][(NS, quarantine["metadata"]["name"])]
    await tripped.converge()
    assert [q["spec"] for q in quarantines(cluster)] == [quarantine["spec"]]


# -- undo, and its retry ------------------------------------------------------------------


def assert_restored(cluster: FakeCluster) -> None:
    """Closed, nothing left to undo, and every object as it was before the trip."""
    assert status(cluster)["state"] == "Closed"
    assert not status(cluster).get("actions")
    assert job(cluster)["spec"]["suspend"] is False
    assert PAUSED_BY not in (job(cluster)["metadata"].get("annotations") or {})
    assert quarantines(cluster) == []
    allow_all = cluster.get(NETPOLS, NS, "allow-all")
    assert allow_all is not None
    assert allow_all["spec"]["podSelector"] == {}
    assert not any(k.startswith(GROUP) for k in allow_all["metadata"].get("annotations") or {})
    assert cluster.all(QUOTAS, NS) == []
    pod = cluster.get(PODS, NS, "rl-0")
    assert pod is not None
    assert QUARANTINE_LABEL not in pod["metadata"]["labels"]


def reset(cluster: FakeCluster, token: str = "1") -> None:
    cluster.edit(BREAKERS, NS, BREAKER, {"metadata": {"annotations": {RESET_ANNOTATION: token}}})


async def test_a_reset_undoes_exactly_what_the_trip_changed(
    tripped: Operator, cluster: FakeCluster
) -> None:
    reset(cluster)
    await tripped.converge()
    assert_restored(cluster)
    assert "BreakerClosed" in reasons(cluster)


async def test_a_reset_is_not_undone_by_the_evidence_of_the_incident_it_ended(
    tripped: Operator, cluster: FakeCluster, clock: Clock
) -> None:
    """The signal's window still holds the incident's data after the reset: that is not a
    new incident. It is once the window holds only data from after the reset, or when the
    signal clears and holds anew."""
    reset(cluster)
    await tripped.converge()
    assert status(cluster)["state"] == "Closed"
    assert status(cluster)["lastReset"] == "2026-12-01T12:00:00.000Z"
    await tripped.converge(trip=True)  # held since before the reset (since=0)
    assert status(cluster)["state"] == "Closed"
    assert job(cluster)["spec"]["suspend"] is False

    await tripped.converge(trip=True, since=clock.time() + 1)  # cleared, then held anew
    assert status(cluster)["state"] == "Open"


async def test_a_signal_that_holds_past_its_window_after_a_reset_trips_again(
    tripped: Operator, cluster: FakeCluster, clock: Clock
) -> None:
    reset(cluster)
    await tripped.converge()
    lookback = tripped.trip().detector.signal("pool").lookback_seconds
    clock.advance(lookback - 1)
    await tripped.converge(trip=True)
    assert status(cluster)["state"] == "Closed"
    clock.advance(1)  # the window now holds only data from after the reset
    await tripped.converge(trip=True)
    assert status(cluster)["state"] == "Open"
    assert status(cluster)["trips"] == 1  # counted afresh since the reset


@pytest.mark.parametrize("point", TRIP_POINTS["gpus"])
async def test_a_trip_finished_by_the_next_operator_is_undone_exactly_by_a_reset(
    point: str,
    cluster: FakeCluster,
    queue: FakeQueue,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = Operator(cluster, queue, clock)
    await first.guarding()
    failpoint = CrashAt(point)
    with monkeypatch.context() as armed:
        armed.setattr(failpoints, "hit", failpoint)
        await first.converge(trip=True)
    assert failpoint.reached
    second = Operator(cluster, queue, clock)
    await second.converge()
    reset(cluster)
    await second.converge()
    assert_restored(cluster)


@pytest.mark.parametrize("point", RESET_POINTS["gpus"])
async def test_an_operator_stopped_during_a_reset_leaves_the_next_to_finish_it(
    point: str,
    tripped: Operator,
    cluster: FakeCluster,
    queue: FakeQueue,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reset(cluster)
    failpoint = CrashAt(point)
    with monkeypatch.context() as armed:
        armed.setattr(failpoints, "hit", failpoint)
        await tripped.converge()
    assert failpoint.reached
    second = Operator(cluster, queue, clock)
    await second.converge()
    assert_restored(cluster)


async def test_an_undo_that_fails_is_retried_after_its_backoff(
    tripped: Operator, cluster: FakeCluster, clock: Clock
) -> None:
    # The resume of the job fails twice: at the reset, and at its first retry.
    cluster.fail("PATCH", "/trainingjobs/rl$", 500, times=2)
    reset(cluster)
    await tripped.converge()
    assert status(cluster)["state"] == "Closed"
    (left,) = status(cluster)["actions"]
    assert left["type"] == "pause"
    assert left["error"].startswith("undo failed: 500")
    assert job(cluster)["spec"]["suspend"] is True
    assert quarantines(cluster) == []  # the other undos went through

    await tripped.converge()  # retried at once; failed again: the next try backs off
    assert tripped.controller.loop.retry  # the loop comes back for it
    assert len(cluster.requests("PATCH", "/trainingjobs/rl$")) == 3  # pause, undo, retry
    clock.advance(breakers.RETRY_SECONDS - 1)
    await tripped.converge()
    assert len(cluster.requests("PATCH", "/trainingjobs/rl$")) == 3  # backing off
    assert job(cluster)["spec"]["suspend"] is True

    clock.advance(1)
    await tripped.converge()
    assert len(cluster.requests("PATCH", "/trainingjobs/rl$")) == 4
    assert job(cluster)["spec"]["suspend"] is False
    assert not status(cluster).get("actions")
    assert "UndoFinished" in reasons(cluster)


# -- hand-off -----------------------------------------------------------------------------


async def test_the_freed_gpus_go_to_the_job_the_queue_admits(
    cluster: FakeCluster, queue: FakeQueue, clock: Clock
) -> None:
    queue.queued = [(OTHER, "next"), (NS, "own")]
    queue.admitted = [(OTHER, "next")]
    operator = Operator(cluster, queue, clock)
    await operator.guarding()
    await operator.converge(trip=True)
    handoff = records(cluster)["reassignGPUs"]
    assert handoff["changed"]["to"] == [f"{OTHER}/next"]
    assert "awaiting" not in handoff["changed"]


async def test_a_handoff_the_queue_has_not_made_yet_is_recorded_when_it_is(
    cluster: FakeCluster, queue: FakeQueue, clock: Clock
) -> None:
    queue.queued = [(OTHER, "next")]
    operator = Operator(cluster, queue, clock)
    await operator.guarding()
    await operator.converge(trip=True)
    assert records(cluster)["reassignGPUs"]["changed"]["awaiting"] == [f"{OTHER}/next"]

    queue.admitted = [(OTHER, "next")]  # the paused pods went; the queue admitted it
    await operator.converge()
    handoff = records(cluster)["reassignGPUs"]
    assert handoff["changed"]["to"] == [f"{OTHER}/next"]
    assert "awaiting" not in handoff["changed"]
    assert "GPUsReassigned" in reasons(cluster)


async def test_a_handoff_a_restarted_operator_finishes_is_owed_back_when_admitted_late(
    cluster: FakeCluster,
    queue: FakeQueue,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Killed mid-trip; the next operator finishes the handoff before the queue (slow on a
    # loaded machine) has admitted the job that waits. Recording nobody would leave that
    # job holding rl's GPUs after the reset, and rl queued behind it for good.
    queue.queued = [(OTHER, "next")]
    first = Operator(cluster, queue, clock)
    await first.guarding()
    with monkeypatch.context() as armed:
        armed.setattr(failpoints, "hit", CrashAt("egress.narrowed"))
        await first.converge(trip=True)
    second = Operator(cluster, queue, clock)
    await second.converge()
    assert records(cluster)["reassignGPUs"]["changed"]["awaiting"] == [f"{OTHER}/next"]

    queue.admitted = [(OTHER, "next")]
    await second.converge()
    assert records(cluster)["reassignGPUs"]["changed"]["to"] == [f"{OTHER}/next"]
    reset(cluster)
    await second.converge()
    assert status(cluster)["reclaim"] == {"job": "rl", "from": f"{OTHER}/next"}


def test_the_fakes_fill_every_index_the_breaker_loop_reads() -> None:
    assert set(BREAKER_INDEXES) == set(inventory.INDEX_NAMES)
