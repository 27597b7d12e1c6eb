"""The operator killed (SIGKILL) between any two of its writes, during trips, GPU handoffs
and resets: after a restart every breaker converges, and every action is applied exactly
once and undone exactly.

The kills come from failpoints (``breaker/failpoints.py``): the operator sends itself
SIGKILL at a named place, the N-th time it gets there. A seeded shuffle orders the runs
over every (trip or reset, failpoint) pair, each point hit once per setting, every run
starting from what the one before left; a failure is replayed by running again with the
seed it prints (``BREAKER_CRASH_SEED``). The GPU setting's 13 points are 13 runs (it was
30, each point two or three times, the suite's largest single test: the repeats went, to
keep the cold run in its hour; the unit tests walk every point as well).

What "exactly once" means here, checked after every run:
- the trip: the egress quarantine exists once, the allow-all policy is narrowed for this
  breaker once and keeps the original selector; the job is suspended and its
  ``paused-was`` record says what it was before the first pause (a second pause would
  record "suspended"); the GPU quota is clamped once with the tenant's first value kept; the
  freed GPUs went to one queued job, and no other job was admitted; the nodes carry one
  taint and one mark; no action is left pending or failed;
- the reset: every spec the breaker touched is back as it was, and no ``breaker.dev/``
  label, annotation, taint or quota is left behind.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from breaker.actions.egress import effective_egress
from breaker.constants import GROUP, VERSION
from breaker.failpoints import VARIABLE
from tests.cluster.scenes import (
    OUTSIDE_POOL,
    Cluster,
    full_cluster,
    policy,
    trainingjob,
)
from tests.conftest import Operator
from tests.crash_points import RESET_POINTS, TRIP_POINTS
from tests.helpers import wait_for
from tests.kube import as_body, meta_of, name_of, spec_of

SEED = int(os.environ.get("BREAKER_CRASH_SEED", "20261130"))
# (setting, run, phase, point, outcome): printed after the session.
CRASHES: list[tuple[str, int, str, str, str]] = []


class Scene:
    """One tenant's tripped job, its breaker, and what must hold after each crash."""

    def __init__(self, c: Cluster, operator: Operator, setting: str) -> None:
        self.c, self.operator, self.setting = c, operator, setting
        self.breaker = "rl-guard" if setting == "gpus" else f"rl-{c.ns[:50]}"[:63]
        self.before: dict[str, Any] = {}
        self.nodes: set[str] = set()
        self.handoff_before_reset: dict[str, Any] | None = None

    def trip(self) -> None:
        self.c.patch(
            "breakers", self.breaker, {"spec": {"override": "ForcedOpen", "overrideReason": "x"}}
        )

    def reset(self, token: str) -> None:
        # What the reset had to go on, for a failure after it (the reset clears it).
        self.handoff_before_reset = next(
            (a for a in self.status().get("actions") or [] if a["type"] == "reassignGPUs"), None
        )
        self.c.patch("breakers", self.breaker, {"spec": {"override": None, "reset": token}})

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.c.breaker(self.breaker).get("status") or {}
        return found

    def settled_open(self) -> bool:
        status = self.status()
        actions = status.get("actions") or []
        return (
            status.get("state") == "ForcedOpen"
            and bool(actions)
            and not any(a.get("pending") or a.get("error") for a in actions)
        )

    def settled_closed(self, token: str) -> bool:
        status = self.status()
        # The handled token is spec.reset and the reset annotation, joined.
        return status.get("state") == "Closed" and status.get("handledReset") == f"{token}|"

    def crash(self, env_point: str, act: Any) -> str:
        """Arm the failpoint, act, and see the operator die there; then start it clean."""
        self.operator.restart({VARIABLE: env_point})
        act()
        wait_for(self.operator.dead, f"the operator to die at {env_point}", timeout=30)
        self.operator.start()
        return "killed"

    # -- what must hold ------------------------------------------------------------------

    def check_contained(self) -> None:
        c, status = self.c, self.status()
        expected = ["revokeEgress", "pause"] + (
            ["reassignGPUs"] if self.setting == "gpus" else ["quarantineNode"]
        )
        assert sorted(a["type"] for a in status["actions"]) == sorted(expected), status
        assert not [a for a in status["actions"] if a.get("error") or a.get("pending")], status
        policies = {p["metadata"]["name"]: p for p in c.netpols()}
        assert f"{self.breaker}-quarantine" in policies
        narrowed = policies["allow-all-egress"]["metadata"]["annotations"]
        assert narrowed["breaker.dev/narrowed-for"] == self.breaker
        assert json.loads(narrowed["breaker.dev/original-pod-selector"]) == {}
        labels = {"breaker.dev/trainingjob": "rl", "breaker.dev/quarantined": self.breaker}
        assert not effective_egress(labels, list(policies.values())).allows(OUTSIDE_POOL, c.ns)
        job = c.get("trainingjobs", "rl")
        assert job["spec"]["suspend"] is True
        was = json.loads(job["metadata"]["annotations"]["breaker.dev/paused-was"])
        assert was["was"] in (None, False), f"paused twice: the record says {was}"
        if self.setting == "gpus":
            self.check_handoff(status)
        else:
            self.check_nodes()

    def check_handoff(self, status: dict[str, Any]) -> None:
        c = self.c
        quota = c.core.read_namespaced_resource_quota("breaker-gpu-clamp", c.ns)
        assert (spec_of(quota).hard or {})["requests.nvidia.com/gpu"] == "16"
        mark = json.loads((meta_of(quota).annotations or {})["breaker.dev/gpu-clamp"])
        assert mark["holders"] == [self.breaker]
        assert mark["created"] is True
        assert len(c.core.list_namespaced_resource_quota(c.ns).items) == 1
        handoff = next(a for a in status["actions"] if a["type"] == "reassignGPUs")["changed"]
        assert sum(f["gpus"] for f in handoff["freed"]) == 16
        assert handoff.get("to") in ([], [f"{c.other}/waiting"]), handoff
        wait_for(lambda: c.state("waiting", c.other) == "Running", "waiting to get the GPUs")
        assert c.state("second", c.other) == "Queued", "a second job got GPUs"

    def check_nodes(self) -> None:
        for name in self.nodes:
            node = self.c.core.read_node(name)
            ours = [t for t in spec_of(node).taints or [] if t.key == "breaker.dev/quarantined"]
            assert len(ours) == 1
            assert spec_of(node).unschedulable is True
            mark = json.loads((meta_of(node).annotations or {})["breaker.dev/quarantine"])
            assert mark["holders"] == [f"{self.c.ns}/{self.breaker}"]

    def check_restored(self) -> None:
        c = self.c
        wait_for(lambda: c.specs() == self.before, "every spec back as it was", timeout=30)
        for obj in [*c.netpols(), c.get("trainingjobs", "rl")]:
            leftovers = [k for k in obj["metadata"].get("annotations") or {} if "breaker.dev/" in k]
            assert not leftovers, f"{obj['metadata']['name']} keeps {leftovers}"
        # A pod the resumed job makes just after the reset may be born quarantined while the
        # admission policy's params still name the breaker; the next pass takes it off.
        wait_for(
            lambda: (
                not c.core.list_namespaced_pod(c.ns, label_selector="breaker.dev/quarantined").items
            ),
            "no pod left quarantined",
            timeout=30,
        )
        for name in self.nodes:
            node = self.c.core.read_node(name)
            assert not spec_of(node).unschedulable
            assert not [t for t in spec_of(node).taints or [] if t.key == "breaker.dev/quarantined"]
            assert "breaker.dev/quarantine" not in (meta_of(node).annotations or {})
        status = self.status()
        assert not status.get("actions"), status

    def ready_again(self) -> None:
        """rl runs again (its GPUs given back) and waiting queues: ready for the next trip."""
        c = self.c
        # Generous: on a loaded machine the scheduler and kwok take their time, and
        # speed is not what this test is about.
        try:
            c.running_again("rl", self.breaker)
        except AssertionError as error:
            raise AssertionError(
                f"{error}\n  the handoff as the reset found it: {self.handoff_before_reset}"
            ) from None
        pods = c.running("rl", 2)
        self.nodes = {p.spec.node_name for p in pods}
        if self.setting == "gpus":
            wait_for(lambda: c.state("waiting", c.other) == "Queued", "waiting queued again")


@pytest.fixture
def scene(
    cluster: Cluster, operator_process: Operator, request: pytest.FixtureRequest
) -> Iterator[Scene]:
    setting: str = request.param
    c = cluster
    found = Scene(c, operator_process, setting)
    if setting == "gpus":
        full_cluster(c)
        # A second queued job: the GPUs must go to one of them, once.
        c.create("trainingjobs", trainingjob("second", 2, 8, priority=1), c.other)
        c.create("breakerpolicies", policy())
    else:
        c.create("trainingjobs", trainingjob("rl", 2, 8))
        c.net.create_namespaced_network_policy(
            c.ns,
            as_body(
                {
                    "metadata": {"name": "allow-all-egress"},
                    "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
                }
            ),
        )
        c.core.patch_namespace(c.ns, {"metadata": {"labels": {"crash-test": c.ns}}})
        body = policy(actions=("revokeEgress", "pause", "quarantineNode"))
        body["kind"], body["metadata"] = "ClusterBreakerPolicy", {"name": c.ns[:50]}
        body["spec"]["targets"]["namespaceSelector"] = {"matchLabels": {"crash-test": c.ns}}
        c.custom.create_cluster_custom_object(GROUP, VERSION, "clusterbreakerpolicies", body)
    found.ready_again()
    wait_for(lambda: found.status().get("state") == "Closed", "the breaker")
    found.before = c.specs()
    try:
        yield found
    finally:
        operator_process.restart()  # never leave a failpoint armed
        if setting == "nodes":
            c.custom.delete_cluster_custom_object(
                GROUP, VERSION, "clusterbreakerpolicies", c.ns[:50]
            )
            lift_quarantines(c)


def lift_quarantines(c: Cluster) -> None:
    """Whatever a failed run left on the shared nodes goes: the tests after need them."""
    for found in c.core.list_node().items:
        taints = spec_of(found).taints or []
        kept = [t for t in taints if t.key != "breaker.dev/quarantined"]
        marked = "breaker.dev/quarantine" in (meta_of(found).annotations or {})
        if len(kept) == len(taints) and not marked and not spec_of(found).unschedulable:
            continue
        kept_taints = c.core.api_client.sanitize_for_serialization(kept) or None
        c.core.patch_node(
            name_of(found),
            {
                "metadata": {"annotations": {"breaker.dev/quarantine": None}},
                "spec": {"unschedulable": None, "taints": kept_taints},
            },
        )


@pytest.mark.parametrize("scene", ["gpus", "nodes"], indirect=True)
def test_killed_anywhere_the_operator_converges_and_acts_exactly_once(scene: Scene) -> None:
    setting = scene.setting
    rng = random.Random(f"{SEED}-{setting}")
    print(f"crash seed {SEED} ({setting}): replay with BREAKER_CRASH_SEED={SEED}")
    # Every (phase, point) pair once, in a seeded order.
    order = [("trip", p) for p in TRIP_POINTS[setting]]
    order += [("reset", p) for p in RESET_POINTS[setting]]
    rng.shuffle(order)
    for run, (phase, point) in enumerate(order):
        token = f"run-{run}"
        where = f"run {run}: killed at {point} during the {phase}"
        if phase == "trip":
            scene.crash(point, scene.trip)
        else:
            scene.trip()
            wait_for(scene.settled_open, f"{where}: the clean trip", timeout=30)
            scene.check_contained()
            scene.crash(point, lambda t=token: scene.reset(t))
        if phase == "trip":
            wait_for(scene.settled_open, f"{where}: contained after the restart", timeout=60)
            scene.check_contained()
            scene.reset(token)
        wait_for(
            functools.partial(scene.settled_closed, token),
            f"{where}: closed after the reset",
            timeout=60,
        )
        scene.check_restored()
        CRASHES.append((setting, run, phase, point, "converged"))
        scene.ready_again()
        assert not scene.operator.dead()
