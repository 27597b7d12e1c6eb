"""What the admission policy reads: a BreakerHold per namespace (actions/admission.py)."""

from __future__ import annotations

import json

from kubernetes import client

from breaker.actions.admission import Holding, Quarantined, changes, hold, params
from breaker.api.hold import BreakerHoldSpec, KinRule
from breaker.controllers import admission as admission_params
from breaker.controllers.admission import AdmissionParams
from tests.fakes import Clock, FakeCluster


def test_params_name_the_quarantined_pods_and_the_scaled_workloads_per_namespace() -> None:
    kin = KinRule(breaker="egress-only", labels={"app": "web"}, kept='{"dns":true}')
    holding = [
        Holding("team-a", "rl-guard", "TrainingJob", "rl", "trainingjobs/rl"),
        Holding("team-a", "helper-guard", "Deployment", "helper", "deployments/helper"),
        Holding("team-b", "set-guard", "StatefulSet", "set", "statefulsets/set"),
        Holding("team-c", "egress-only", workload="deployments/web", kin=kin),
    ]
    quarantined = [
        Quarantined("team-a", "rl-0", "rl-guard", {"app": "rl"}),
        Quarantined("team-a", "helper-1", "helper-guard", {"app": "helper"}),
        # Its breaker holds nothing: left out.
        Quarantined("team-a", "stale-0", "reset-long-ago", {"app": "old"}),
        Quarantined("team-c", "web-1", "egress-only", {"app": "web", "tier": "front"}),
        Quarantined("team-d", "x", "elsewhere", {}),
    ]
    services = [
        ("team-c", "web", {"app": "web"}),  # picks the quarantined pod: its proxy refused
        ("team-c", "web-back", {"app": "web", "tier": "back"}),
        ("team-c", "everything", {}),  # no selector: Endpoints by hand, not the pods'
        ("team-a", "old", {"app": "old"}),
    ]
    assert params(holding, quarantined, services) == {
        "team-a": BreakerHoldSpec(
            breakers=["helper-guard", "rl-guard"],
            pods={"rl-0": "rl-guard", "helper-1": "helper-guard"},
            scaled={"deployments/helper": "helper-guard"},
            pausing=["helper-guard", "rl-guard"],
            workloads={"trainingjobs/rl": "rl-guard", "deployments/helper": "helper-guard"},
        ),
        "team-b": BreakerHoldSpec(
            breakers=["set-guard"],
            scaled={"statefulsets/set": "set-guard"},
            pausing=["set-guard"],
            workloads={"statefulsets/set": "set-guard"},
        ),
        "team-c": BreakerHoldSpec(
            breakers=["egress-only"],
            pods={"web-1": "egress-only"},
            workloads={"deployments/web": "egress-only"},
            kin=[kin],
            services={"web": "egress-only"},
        ),
    }
    assert params([], quarantined) == {}


def test_only_what_differs_is_written_and_what_is_no_longer_held_is_deleted() -> None:
    x, y = BreakerHoldSpec(breakers=["x"]), BreakerHoldSpec(breakers=["y"])
    y_pod = BreakerHoldSpec(breakers=["y"], pods={"p": "y"})
    written = {"a": x, "b": y, "gone": x, "unreadable": None}
    wanted = {"a": x, "b": y_pod, "new": x, "unreadable": y}
    write, delete = changes(wanted, written)
    assert write == {"b": y_pod, "new": x, "unreadable": y}
    assert delete == ["gone"]


def test_the_hold_is_labelled_as_breakers_own_and_keeps_empty_maps() -> None:
    body = hold("team-a", BreakerHoldSpec(breakers=["x"]))
    assert (body["apiVersion"], body["kind"]) == ("breaker.dev/v1alpha1", "BreakerHold")
    assert body["metadata"] == {
        "name": "breaker-containment",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/managed-by": "breaker"},
    }
    # The policy looks names up in the maps: they are there even when empty.
    assert body["spec"] == {
        "breakers": ["x"],
        "pods": {},
        "scaled": {},
        "pausing": [],
        "workloads": {},
        "kin": [],
        "services": {},
    }


# -- keeping them: AdmissionParams over a watch ------------------------------------------


HOLDS = ("breaker.dev", "breakerholds")
HELD = BreakerHoldSpec(breakers=["rl-guard"], pods={"rl-0": "rl-guard"})


def keeper(
    cluster: FakeCluster, clock: Clock, shown: dict[str, BreakerHoldSpec | None]
) -> AdmissionParams:
    """The params kept over a watch that shows ``shown`` (a test moves it on by hand)."""
    return AdmissionParams(cluster.api, lambda: shown, lambda _: True, clock.monotonic)


async def test_what_the_watch_shows_is_what_is_written_again_and_nothing_is_listed() -> None:
    cluster, clock, shown = FakeCluster(), Clock(), dict[str, BreakerHoldSpec | None]()
    params = keeper(cluster, clock, shown)
    assert not await params.sync(lambda: {"team-a": HELD})
    held = cluster.get(HOLDS, "team-a", "breaker-containment")
    assert held is not None
    # A pass before the watch shows it sends it again: the whole spec, which changes nothing.
    assert not await params.sync(lambda: {"team-a": HELD})
    assert [c.method for c in cluster.calls] == ["POST", "POST", "PATCH"]  # a 409, replaced
    again = cluster.get(HOLDS, "team-a", "breaker-containment")
    assert again is not None
    assert again["spec"] == held["spec"]
    shown["team-a"] = HELD  # the watch caught up: nothing more is sent
    assert not await params.sync(lambda: {"team-a": HELD})
    assert len(cluster.calls) == 3
    # Deleted by hand: written again once the watch says so.
    cluster.objects[HOLDS].clear()
    del shown["team-a"]
    assert not await params.sync(lambda: {"team-a": HELD})
    assert cluster.get(HOLDS, "team-a", "breaker-containment") is not None
    # One that does not read is written again whole.
    shown["team-a"] = None
    assert not await params.sync(lambda: {"team-a": HELD})
    assert cluster.calls[-1].method == "PATCH"
    # No longer held: deleted, and a delete that finds it gone is done.
    shown["team-a"] = HELD
    assert not await params.sync(dict)
    assert not await params.sync(dict)
    assert [c.method for c in cluster.calls[-2:]] == ["DELETE", "DELETE"]
    assert cluster.get(HOLDS, "team-a", "breaker-containment") is None
    assert not cluster.requests("GET"), "never listed: the watch says what is there"


async def test_a_namespace_that_is_gone_holds_nothing_and_is_no_failure() -> None:
    cluster, clock = FakeCluster(), Clock()
    cluster.fail("POST", "/breakerholds$", 404, times=1000)
    gone = client.ApiException(status=404)
    gone.body = json.dumps({"kind": "Status", "details": {"name": "team-a", "kind": "namespaces"}})
    assert admission_params._namespace_gone(gone)
    assert not admission_params._not_served(gone)
    page = client.ApiException(status=404)
    page.body = "404 page not found"
    assert admission_params._not_served(page)
    params = keeper(cluster, clock, {})
    # The fake's 404 names nothing: the kind is not served, said once, not retried for a while.
    assert not await params.sync(lambda: {"team-a": HELD})
    assert not await params.sync(lambda: {"team-a": HELD})
    assert len(cluster.requests("POST")) == 1
