"""Containment holds the tenant's workload, not one object: new pods of it and its kin are
quarantined, a pod kept terminating is held, a workload re-created under its name is
followed, and what still reaches the held pods is in the status. The breaker loop over the
fakes (``tests/fakes.py``), as in ``test_breaker_controller.py``; the packets are the
cluster suite's (``tests/cluster/test_hostile_tenant_node.py``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from breaker.actions import kin as kin_core
from breaker.actions.connections import Kept, lease_name
from breaker.circuit.views import PodView
from breaker.constants import KEPT_ANNOTATION, QUARANTINE_LABEL, SESSIONS_ANNOTATION
from tests.fakes import Clock, FakeCluster, FakeQueue, Json
from tests.unit.test_breaker_controller import (
    BREAKER,
    BREAKERS,
    EVENTS,
    HOLDS,
    NS,
    PODS,
    TRAININGJOBS,
    Operator,
    _ctl,
    job,
    queue,
    records,
    scene,
    status,
    tripped,
)

__all__ = ["queue", "tripped"]  # test_breaker_controller's fixtures, over this cluster

pytestmark = pytest.mark.usefixtures("fresh_discovery")


def view(name: str, labels: dict[str, str], account: str | None = "agent") -> PodView:
    return PodView(
        NS, name, f"uid-{name}", None, labels, "gpu-1", 0, "Running", False, None, account
    )


def test_kin_are_the_labels_every_pod_carries_less_an_incarnations() -> None:
    pods = [
        view("web-7f9-a", {"app": "web", "pod-template-hash": "7f9", "shard": "0"}),
        view("web-7f9-b", {"app": "web", "pod-template-hash": "7f9", "shard": "1"}),
    ]
    kin = kin_core.kin_of(pods)
    assert kin == kin_core.Kin({"app": "web"}, "agent")
    job_pods = [view("j-0", {"batch.kubernetes.io/controller-uid": "u1", "job-name": "j"})]
    assert kin_core.kin_of(job_pods).labels == {"job-name": "j"}  # a new Job's uid differs
    # The default ServiceAccount is every pod's: it makes nobody kin.
    assert kin_core.kin_of([view("x", {}, "default")]) == kin_core.Kin()
    assert not kin_core.Kin()
    assert not kin_core.Kin().of({"app": "web"}, "default")  # matches nothing, not everything
    assert kin.of({"app": "web", "extra": "1"}, "other")
    assert kin.of({"app": "else"}, "agent")  # the agent's identity
    assert not kin.of({"app": "else"}, "other")
    assert kin_core.Kin.read(kin.record()) == kin
    # A ServiceAccount other workloads of the namespace run as tells nobody apart.
    shared = kin_core.kin_of(pods, [*pods, view("other", {"app": "db"})])
    assert shared == kin_core.Kin({"app": "web"}, None)


def test_a_kin_pod_another_breaker_quarantines_stays_its_own_a_forged_one_is_claimed() -> None:
    kin = kin_core.Kin({"app": "web"})
    own = [view("web-1", {"app": "web"})]
    others = [
        view("by-other", {"app": "web", QUARANTINE_LABEL: "other-guard"}),
        view("forged", {"app": "web", QUARANTINE_LABEL: "pause-only"}),
        view("fresh", {"app": "web"}),
        view("old", {"app": "web-v0", QUARANTINE_LABEL: "web-guard"}),
        view("stranger", {"app": "db"}),
    ]
    held = kin_core.held_pods(kin, [*own, *others], own, "web-guard", {"other-guard"})
    assert [p.name for p in held] == ["web-1", "forged", "fresh", "old"]


def test_the_services_that_reach_held_pods_from_outside() -> None:
    services: list[Json] = [
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}}},
        {"metadata": {"name": "np"}, "spec": {"selector": {"app": "web"}, "type": "NodePort"}},
        {"metadata": {"name": "lb"}, "spec": {"selector": {"app": "db"}, "type": "LoadBalancer"}},
        {
            "metadata": {"name": "ext"},
            "spec": {"selector": {"app": "web"}, "externalIPs": ["1.2.3.4"]},
        },
    ]
    held = [{"app": "web", QUARANTINE_LABEL: BREAKER}]
    assert kin_core.exposing(services, held) == ["ext (externalIPs)", "np (NodePort)"]
    assert kin_core.selecting(services, held) == ["ext", "np", "web"]


def pod(name: str, labels: dict[str, str], **extra: Any) -> Json:
    body: Json = {
        "metadata": {"name": name, "namespace": NS, "labels": labels, **extra},
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "c"}], "serviceAccountName": "agent"},
        "status": {"phase": "Running", "podIP": f"10.244.1.{len(name)}"},
    }
    return body


@pytest.fixture
def cluster() -> FakeCluster:
    c = scene()
    c.edit(PODS, NS, "rl-0", {"spec": {"serviceAccountName": "agent"}})
    return c


def labelled(cluster: FakeCluster, name: str) -> str | None:
    found = cluster.get(PODS, NS, name)
    assert found is not None
    value: str | None = (found["metadata"].get("labels") or {}).get(QUARANTINE_LABEL)
    return value


def warnings(cluster: FakeCluster, reason: str) -> list[str]:
    return [
        e["message"]
        for e in cluster.all(EVENTS, NS)
        if e["reason"] == reason and e["type"] == "Warning"
    ]


async def test_a_terminating_pod_is_held_at_the_trip(
    cluster: FakeCluster, queue: FakeQueue, clock: Clock
) -> None:
    """Deleted with a grace period of days before the trip, it runs on: labelled, listed."""
    cluster.edit(PODS, NS, "rl-0", {"metadata": {"deletionTimestamp": "2026-12-07T10:00:00Z"}})
    operator = Operator(cluster, queue, clock)
    await operator.guarding()
    await operator.converge(trip=True)
    assert labelled(cluster, "rl-0") == BREAKER
    assert records(cluster)["revokeEgress"]["changed"]["pods"] == ["rl-0"]


async def test_new_pods_of_the_held_job_and_its_kin_are_quarantined_on_the_next_pass(
    tripped: Operator, cluster: FakeCluster
) -> None:
    """Where no mutating admission policy labels them at birth: a replacement pod of the
    job, and a bare pod with its labels, are labelled with what the node agent is to keep
    (the text the BreakerHold gives the mutating policy); a pod of another app is not."""
    owner = cluster.get(("batch", "jobs"), NS, "rl")
    assert owner is not None
    ref = _ctl({"kind": "Job", "name": "rl", "uid": owner["metadata"]["uid"]})
    cluster.put(PODS, pod("rl-1", {"app": "rl"}, ownerReferences=[ref]))
    cluster.put(PODS, pod("bare", {"app": "rl", "extra": "yes"}))
    cluster.put(
        PODS,
        pod(
            "other",
            {"app": "web"},
        ),
    )
    cluster.edit(PODS, NS, "other", {"spec": {"serviceAccountName": "web"}})
    await tripped.converge()
    assert labelled(cluster, "rl-1") == BREAKER
    assert labelled(cluster, "bare") == BREAKER
    assert labelled(cluster, "other") is None
    said = warnings(cluster, "ContainmentRestored")
    assert any("rl-1" in m and "bare" in m and "new" in m for m in said), said
    hold = cluster.get(HOLDS, NS, "breaker-containment")
    assert hold is not None
    (kin,) = hold["spec"]["kin"]
    assert kin["labels"] == {"app": "rl"}
    assert kin["serviceAccount"] == "agent"
    found = cluster.get(PODS, NS, "rl-1")
    assert found is not None
    assert found["metadata"]["annotations"][KEPT_ANNOTATION] == kin["kept"]
    kept = Kept.parse(kin["kept"])
    assert kept.since is not None
    assert not kept.kill_sessions
    # The next pass finds nothing to do.
    before = len(cluster.requests("PATCH", "/pods/"))
    await tripped.converge()
    assert len(cluster.requests("PATCH", "/pods/")) == before


async def test_what_the_node_agent_keeps_is_written_again_when_changed(
    tripped: Operator, cluster: FakeCluster
) -> None:
    wanted = cluster.get(PODS, NS, "rl-0")
    assert wanted is not None
    text = wanted["metadata"]["annotations"][KEPT_ANNOTATION]
    widened = json.dumps({**json.loads(text), "services": ["198.51.100.4"]})
    cluster.edit(PODS, NS, "rl-0", {"metadata": {"annotations": {KEPT_ANNOTATION: widened}}})
    await tripped.converge()
    found = cluster.get(PODS, NS, "rl-0")
    assert found is not None
    assert found["metadata"]["annotations"][KEPT_ANNOTATION] == text
    assert any("written again" in m for m in warnings(cluster, "ContainmentRestored"))


async def test_a_job_deleted_and_created_again_is_followed_and_held(
    tripped: Operator, cluster: FakeCluster
) -> None:
    """Under the same name, a new uid: the Breaker points at it (the old uid kept in its
    status, a Warning Event on both), and holds it paused as it held the one before."""
    old = job(cluster)["metadata"]["uid"]
    del cluster.objects[TRAININGJOBS][(NS, "rl")]
    cluster.put(
        TRAININGJOBS,
        {
            "apiVersion": "breaker.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "rl", "namespace": NS, "labels": {"team": "agents"}},
            "spec": {"replicas": 1, "gpusPerReplica": 8, "suspend": False},
        },
    )
    new = job(cluster)["metadata"]["uid"]
    assert new != old
    await tripped.converge()
    await tripped.converge()
    breaker = cluster.get(BREAKERS, NS, BREAKER)
    assert breaker is not None
    assert breaker["spec"]["targetRef"]["uid"] == new
    assert [f["uid"] for f in breaker["status"]["followed"]] == [old]
    said = warnings(cluster, "TargetRecreated")
    assert said
    assert old in said[0]
    assert new in said[0]
    assert job(cluster)["spec"]["suspend"] is True
    assert status(cluster)["state"] == "Open"


async def test_the_status_lists_services_exposing_held_pods_and_exec_sessions(
    tripped: Operator, cluster: FakeCluster
) -> None:
    cluster.put(
        ("", "services"),
        {
            "metadata": {"name": "rl-np", "namespace": NS},
            "spec": {"selector": {"app": "rl"}, "type": "NodePort"},
        },
    )
    sessions = {
        f"{NS}/rl-0": [
            {"pid": 4242, "command": "sh", "started": "2026-12-07T10:00:00Z", "ended": False}
        ]
    }
    cluster.put(
        ("coordination.k8s.io", "leases"),
        {
            "metadata": {
                "name": lease_name("gpu-1"),
                "namespace": "breaker-system",
                "annotations": {SESSIONS_ANNOTATION: json.dumps(sessions)},
            },
            "spec": {"holderIdentity": "gpu-1"},
        },
    )
    await tripped.converge()
    exposure = status(cluster)["exposure"]
    assert exposure["services"] == ["rl-np (NodePort)"]
    assert exposure["sessions"] == [
        {"pod": "rl-0", "node": "gpu-1", "pid": 4242, "command": "sh",
         "started": "2026-12-07T10:00:00Z", "ended": False}
    ]  # fmt: skip
    hold = cluster.get(HOLDS, NS, "breaker-containment")
    assert hold is not None
    assert hold["spec"]["services"] == {"rl-np": BREAKER}
    # The session ends (the agent no longer lists it): kept, as ended.
    lease = cluster.get(("coordination.k8s.io", "leases"), "breaker-system", lease_name("gpu-1"))
    assert lease is not None
    lease["metadata"]["annotations"][SESSIONS_ANNOTATION] = "{}"
    tripped.controller.actuator.sessions_due.clear()
    await tripped.converge()
    assert status(cluster)["exposure"]["sessions"][0]["ended"] is True
    # A reset forgets it all.
    cluster.edit(BREAKERS, NS, BREAKER, {"spec": {"reset": "admin"}})
    await tripped.converge()
    await tripped.converge()
    assert status(cluster)["state"] == "Closed"
    assert "exposure" not in status(cluster)


async def test_a_reset_lets_go_of_the_kin_before_the_job_resumes(
    tripped: Operator, cluster: FakeCluster
) -> None:
    """The BreakerHold drops the breaker's kin before the pause is undone (the pods the
    job makes as it resumes are not born quarantined); one born so all the same (the
    mutating policy reads its params from a cache) has the label taken off."""
    await tripped.converge()  # the pass the end of the actions wakes: the BreakerHold made
    assert cluster.get(HOLDS, NS, "breaker-containment") is not None
    cluster.edit(BREAKERS, NS, BREAKER, {"spec": {"reset": "admin"}})
    await tripped.converge()
    order = [
        c.method
        for c in cluster.calls
        if (c.method == "DELETE" and "/breakerholds/" in c.path)
        or (c.method == "PATCH" and c.path.endswith("/trainingjobs/rl"))
    ]
    # The trip's pause, then the params let go, then the resume.
    assert order[-2:] == ["DELETE", "PATCH"], order
    cluster.put(PODS, pod("rl-1", {"app": "rl", QUARANTINE_LABEL: BREAKER}))
    await tripped.converge()
    assert labelled(cluster, "rl-1") is None
    assert job(cluster)["spec"]["suspend"] is False
