"""A hostile tenant, and how its attempts to get out are judged, with the chart's admission
policies on and off: shared by the hostile-tenant suites (the API's view on kwok nodes,
``test_hostile_tenant.py``; the packets' on the real node, ``test_hostile_tenant_node.py``).

- Policy on (the chart's default): a way out is refused by the API server, by the
  admission policy, whose message names the Breaker and the reset command; nothing changes.
- Policy off (``helm upgrade --set admissionPolicy.enabled=false``, as an admin would):
  what RBAC allows is admitted, and the operator undoes what it can, with a Warning Event
  saying what it undid; how long that took is recorded.

What each attempt came to is printed at the end of the run (``ATTEMPTS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.paths import repo_root
from tests.cluster.scenes import Cluster
from tests.conftest import install_chart
from tests.helpers import wait_for

# (attack, how it ended, seconds to undo or None if refused): printed after the run.
ATTEMPTS: list[tuple[str, str, float | None]] = []


class Tenant:
    """The tenant's own clients: everything it does goes through its `edit` token."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.apps = client.AppsV1Api(api)


def restored_events(c: Cluster, breaker: str) -> list[Any]:
    listed = c.core.list_namespaced_event(
        c.ns, field_selector=f"involvedObject.name={breaker},reason=ContainmentRestored"
    )
    return [e for e in listed.items if e.type == "Warning"]


class Escapes:
    """The tenant's attempts, judged by whether the admission policy is on."""

    def __init__(self, c: Cluster, policy_on: bool) -> None:
        self.c, self.policy_on = c, policy_on
        self.mode = "policy on" if policy_on else "policy off"

    def record(self, what: str, outcome: str, seconds: float | None = None) -> None:
        ATTEMPTS.append((f"[{self.mode}] {what}", outcome, seconds))

    def escape(
        self,
        breaker: str,
        what: str,
        attempt: Callable[[], Any],
        held: Callable[[], bool],
    ) -> None:
        """Policy on: refused, naming ``breaker``, and ``held`` still. Off: undone
        (``held`` true again), and a Warning Event on the breaker says so; how long it
        took is recorded (the run's summary prints it: the window docs/operations/
        admission.md states)."""
        if self.policy_on:
            self.refused_at_admission(breaker, what, attempt)
            assert held(), f"{what}: refused, yet something changed"
            return
        c = self.c
        warnings_before = len(restored_events(c, breaker))
        attempt()
        changed = time.monotonic()
        wait_for(held, f"the operator to undo: {what}", timeout=30, interval=0.02)
        took = time.monotonic() - changed
        self.record(what, "undone", took)
        wait_for(
            lambda: len(restored_events(c, breaker)) > warnings_before,
            f"a Warning Event for: {what}",
            timeout=10,
        )

    def refused_at_admission(self, breaker: str, what: str, attempt: Callable[[], Any]) -> str:
        with pytest.raises(client.ApiException) as caught:
            attempt()
        said = caught.value.body or ""
        assert caught.value.status == 403, said
        assert "ValidatingAdmissionPolicy" in said, said
        assert breaker in said, said
        self.record(what, "refused at admission (403)")
        return said

    def connect(self, breaker: str, what: str, attempt: Callable[[], Any]) -> None:
        """exec, attach, port-forward, proxy: refused with the policy on. Off, admitted:
        the API server goes on to the node (a kwok node has no kubelet, so it fails
        there)."""
        if self.policy_on:
            said = self.refused_at_admission(breaker, what, attempt)
            assert "kubectl breaker reset" in said, said
            return
        with pytest.raises(client.ApiException) as caught:
            attempt()
        assert caught.value.status != 403, caught.value.body
        self.record(what, f"admitted (then {caught.value.status} from the node)")

    def refused(self, what: str, attempt: Callable[[], Any]) -> None:
        """RBAC refuses the tenant (403) before anything changes, policy or not."""
        with pytest.raises(client.ApiException) as caught:
            attempt()
        assert caught.value.status == 403, caught.value
        assert "ValidatingAdmissionPolicy" not in (caught.value.body or ""), "RBAC, not admission"
        self.record(what, "refused by RBAC (403)")

    def admitted(self, breaker: str, what: str, attempt: Callable[[], Any], outcome: str) -> Any:
        """Refused with the policy on; off, admitted with nothing for the operator to undo
        (``outcome`` says what it came to). What the attempt returned, off."""
        if self.policy_on:
            self.refused_at_admission(breaker, what, attempt)
            return None
        found = attempt()
        self.record(what, f"admitted: {outcome}")
        return found


@pytest.fixture(params=["policy off", "policy on"])
def policy_on(request: pytest.FixtureRequest, local_cluster: LocalCluster) -> Iterator[bool]:
    """The chart's admission policies as installed, or turned off for the test with `helm
    upgrade` and on again after it, as an admin would. Off runs first, so that on proves
    the policies turned off and on again hold."""
    if request.param == "policy on":
        yield True
        return
    chart = repo_root() / "helm" / "breaker"
    install_chart(local_cluster, chart, "admissionPolicy.enabled=false")
    try:
        yield False
    finally:
        install_chart(local_cluster, chart)
