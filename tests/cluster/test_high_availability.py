"""Two operators with kopf peering: exactly one acts, and when it dies the other takes over.

The session's operator is the active one (it started first: a newcomer takes a priority
below every live peer). A second operator joins and must stay a standby; the active one is
then killed with SIGKILL (no goodbye to its peers), and the time until the standby acts
on a change made right after the kill is the takeover time, printed at the end of the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.scenes import Cluster, policy, trainingjob
from tests.conftest import Operator
from tests.helpers import wait_for

TAKEOVERS: list[float] = []  # seconds from the SIGKILL to the standby's action


def test_one_acts_and_the_standby_takes_over(
    cluster: Cluster,
    operator_process: Operator,
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    c = cluster
    c.create("trainingjobs", trainingjob("rl", 1, 8))
    c.running("rl", 1)
    c.create("breakerpolicies", policy())
    wait_for(lambda: c.breaker("rl-guard").get("status"), "the breaker")
    standby = Operator(operator_process.cluster, operator_kubeconfig, tmp_path / "standby.log")
    standby.start()
    try:
        operator_process.wait_evaluations(5)  # the active one goes on evaluating
        assert standby.evaluations() == 0, "the standby evaluated too"
        assert standby.metric("breaker_operator_active") == 0
        assert operator_process.metric("breaker_operator_active") == 1
        assert "this operator is the one acting" not in standby.log.read_text()

        operator_process.kill()
        killed = time.monotonic()
        c.patch("breakers", "rl-guard", {"spec": {"override": "ForcedOpen"}})
        wait_for(
            lambda: c.settled_state("rl-guard") == "ForcedOpen",
            "the standby to take over and trip the breaker",
            timeout=90,
            interval=0.1,
        )
        took = time.monotonic() - killed
        TAKEOVERS.append(took)
        assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True
        assert standby.evaluations() > 0

        # The old operator comes back: now it is the newcomer, and waits.
        operator_process.start()
        c.patch("breakers", "rl-guard", {"spec": {"override": None, "reset": "ha"}})
        wait_for(
            lambda: c.breaker("rl-guard").get("status", {}).get("state") == "Closed",
            "the new active operator to reset",
        )
        assert operator_process.evaluations() == 0, "the returning operator acted as a standby"
        assert operator_process.metric("breaker_operator_active") == 0
    finally:
        # The standby leaves with a goodbye: the session's operator takes over at once.
        standby.stop()
    wait_for(lambda: operator_process.evaluations() > 0, "the session's operator active again", 60)
