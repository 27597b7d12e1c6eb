"""Bad input at scale: generated policies and jobs against the real API server.

Hypothesis writes BreakerPolicy and TrainingJob specs from every field's good and bad
values (odd names and label values, unknown presets, broken PromQL, 5,000-character
queries, negative and huge numbers, durations that are not durations). Each one must be
either refused at the door with a message naming the field, or accepted and handled: the
operator writes its status, stays up, and a canary breaker in another namespace keeps
acting while it all goes on.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from breaker.constants import GROUP, VERSION
from breaker.detect.catalog import PRESETS
from tests.cluster.scenes import Cluster, policy, trainingjob
from tests.conftest import Operator
from tests.helpers import wait_for

# (kind, accepted, refused): printed after the run.
OUTCOMES: dict[str, list[int]] = {}
COUNTER = itertools.count()
FIELD = re.compile(r"spec\.[A-Za-z]")

# Most values are good, so that much is accepted and then handled; the rest are not.
GOOD_DURATIONS = st.sampled_from(["0s", "1s", "30s", "5m", "2h"])
DURATIONS = st.one_of(
    GOOD_DURATIONS,
    GOOD_DURATIONS,
    st.sampled_from(["-1s", "1d", "abc", "", "10", "9h9h", "99999999999h"]),
)
ODD = st.sampled_from(["x" * 70, "Bad Name", "ünï", 'q"}', "${HOME}", "-lead", "a\nb", "🙂", ""])
GOOD_NAMES = st.sampled_from(["pool", "ssh", "scan", "gpu", "net"])
NAMES = st.one_of(GOOD_NAMES, GOOD_NAMES, GOOD_NAMES, ODD, st.text(max_size=8))
SEVERITIES = st.sampled_from(["critical", "warning", "info", "critical", "bogus"])
QUERIES = st.sampled_from(
    [
        "up",
        "sum by (namespace, pod) (rate(breaker_sim_gpu_util[1m]))",
        "((",
        'label_replace(vector(1), "pod", "\\"}evil{", "", "")',
        'label_replace(label_replace(vector(3), "namespace", "kube-system", "", ""), '
        '"pod", "🙂\\n\\"", "", "")',
        'count_values("pod", up)',
        "topk(100000, up)",
        "x" * 5000,
    ]
)
PARAMS = st.dictionaries(
    st.sampled_from(["window", "threshold", "persistence", "bogus", "ports"]),
    st.sampled_from(["1m", "0.5", "x", "", "22,2222", "-3", "1e309"]),
    max_size=2,
)
CONDITION = st.fixed_dictionaries(
    {
        "operator": st.sampled_from([">", "<=", "==", ">", "=~"]),
        "threshold": st.floats(allow_nan=False, allow_infinity=False, width=32),
    }
)
PRESET_SIGNAL = st.fixed_dictionaries(
    {"name": NAMES, "preset": st.sampled_from([*sorted(PRESETS), "no-such-preset"])},
    optional={"params": PARAMS, "for": DURATIONS, "severity": SEVERITIES},
)
QUERY_SIGNAL = st.fixed_dictionaries(
    {"name": NAMES, "query": QUERIES},
    optional={"condition": CONDITION, "for": DURATIONS, "severity": SEVERITIES},
)
ANY_SIGNAL = st.fixed_dictionaries(
    {"name": NAMES},
    optional={
        "preset": st.sampled_from(sorted(PRESETS)),
        "query": QUERIES,
        "params": PARAMS,
        "for": DURATIONS,
    },
)


def _named(signal: Mapping[str, object]) -> str:
    """A signal's name (every generated name is a string), to keep the names unique."""
    return str(signal["name"])


def _typed(action: Mapping[str, object]) -> str:
    """An action's type (a generated string), to keep the types unique."""
    return str(action["type"])


SIGNAL = st.one_of(PRESET_SIGNAL, PRESET_SIGNAL, QUERY_SIGNAL, QUERY_SIGNAL, ANY_SIGNAL)
SIGNALS = st.lists(SIGNAL, min_size=1, max_size=2, unique_by=_named)
ACTIONS = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["revokeEgress", "pause", "reassignGPUs", "captureEvidence", "explode"]
            )
        }
    ),
    max_size=3,
    unique_by=_typed,
)
POLICY_SPEC = st.fixed_dictionaries(
    {"signals": SIGNALS},
    optional={
        "mode": st.sampled_from(["Enforce", "DryRun", "DryRun", "Off"]),
        "prometheus": st.fixed_dictionaries(
            {},
            optional={
                "interval": DURATIONS,
                "timeout": DURATIONS,
                "url": st.sampled_from(
                    ["http://127.0.0.1:1", "http://127.0.0.1:1", "ftp://x", "not a url"]
                ),
            },
        ),
        "actions": ACTIONS,
        "recovery": st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["Manual", "HalfOpen", "Never"]),
                "maxTrips": st.one_of(st.integers(0, 10), st.integers(-5, 10**7)),
                "backoffFactor": st.floats(-10, 1e6, allow_nan=False),
                "cooldown": DURATIONS,
            },
        ),
        "targets": st.fixed_dictionaries(
            {},
            optional={
                "kinds": st.lists(
                    st.sampled_from(["TrainingJob", "TrainingJob", "Job", "Pod"]),
                    min_size=1,
                    max_size=2,
                    unique=True,
                ),
                "selector": st.fixed_dictionaries(
                    {
                        "matchLabels": st.dictionaries(
                            st.sampled_from(["team", "tier", "Bad Key!"]),
                            st.one_of(st.sampled_from(["agents", "a-b"]), ODD),
                            max_size=2,
                        )
                    }
                ),
            },
        ),
    },
)
JOB_SPEC = st.fixed_dictionaries(
    {
        "replicas": st.one_of(st.integers(1, 3), st.integers(-2, 10**4)),
        "gpusPerReplica": st.one_of(st.integers(0, 4), st.integers(-1, 64)),
    },
    optional={
        "priority": st.one_of(st.integers(-100, 100), st.integers(-(10**10), 10**10)),
        "suspend": st.booleans(),
        "egress": st.fixed_dictionaries(
            {},
            optional={
                "dns": st.booleans(),
                "cidrs": st.lists(
                    st.fixed_dictionaries(
                        {"cidr": st.sampled_from(["10.0.0.0/8", "192.0.2.1/32", "300.1.1/8", "x"])},
                        optional={
                            "ports": st.lists(
                                st.fixed_dictionaries(
                                    {"port": st.one_of(st.integers(1, 9), st.integers(-1, 70000))},
                                    optional={"protocol": st.sampled_from(["TCP", "UDP", "ICMP"])},
                                ),
                                max_size=2,
                            )
                        },
                    ),
                    max_size=2,
                ),
            },
        ),
    },
)


# Sixty examples each, against the real API server: no deadline, no example database.
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def submit(c: Cluster, plural: str, body: dict[str, Any]) -> bool:
    """Create it; True if accepted. A refusal must name the spec field at fault."""
    outcome = OUTCOMES.setdefault(plural, [0, 0])
    try:
        c.create(plural, body)
    except client.ApiException as error:
        refusal = error
    else:
        outcome[0] += 1
        return True
    assert refusal.status in (400, 422), f"{refusal.status}: {refusal.body}"
    assert FIELD.search(refusal.body or ""), f"the refusal names no field: {refusal.body}"
    outcome[1] += 1
    return False


def ready_condition(c: Cluster, name: str) -> dict[str, Any] | None:
    """The policy's Ready condition, once the operator has written one."""
    conditions = (c.get("breakerpolicies", name).get("status") or {}).get("conditions") or []
    return next((x for x in conditions if x["type"] == "Ready"), None)


def job_state(c: Cluster, name: str) -> str | None:
    """The job's state, once the operator has written one."""
    state: str | None = (c.get("trainingjobs", name).get("status") or {}).get("state")
    return state


def canary_acts(c: Cluster, token: str) -> None:
    """The other tenant's breaker still trips and resets promptly: nothing stalled."""
    c.custom.patch_namespaced_custom_object(
        GROUP, VERSION, c.other, "breakers", "steady-guard", {"spec": {"override": "ForcedOpen"}}
    )
    wait_for(
        lambda: c.settled_state("steady-guard", c.other) == "ForcedOpen",
        "the canary to trip",
        timeout=30,
    )
    c.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        c.other,
        "breakers",
        "steady-guard",
        {"spec": {"override": None, "reset": token}},
    )
    wait_for(
        lambda: c.settled_state("steady-guard", c.other) == "Closed",
        "the canary to reset",
        timeout=30,
    )


@pytest.fixture
def canary(cluster: Cluster) -> Cluster:
    c = cluster
    c.create("trainingjobs", trainingjob("steady", 1, 8), c.other)
    c.running("steady", 1, c.other)
    c.create("breakerpolicies", policy(), c.other)
    wait_for(lambda: c.settled_state("steady-guard", c.other) == "Closed", "the canary")
    # A workload in the generated policies' namespace: each accepted one guards and evaluates it.
    c.create("trainingjobs", trainingjob("target", 1, 1))
    return c


def test_generated_policies_are_refused_naming_the_field_or_handled(
    canary: Cluster, operator_process: Operator
) -> None:
    c = canary
    accepted: list[str] = []

    @EXAMPLES
    @given(spec=POLICY_SPEC)
    def generated(spec: dict[str, Any]) -> None:
        name = f"gen-{next(COUNTER)}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BreakerPolicy"}
        if submit(c, "breakerpolicies", {**body, "metadata": {"name": name}, "spec": spec}):
            accepted.append(name)

    generated()
    assert not operator_process.dead(), "the operator died"
    canary_acts(c, "after-policies")
    for name in accepted:
        ready = wait_for(
            functools.partial(ready_condition, c, name),
            f"policy {name} handled (its Ready condition)",
        )
        assert ready["reason"] in ("Valid", "InvalidPolicy"), ready
        if ready["reason"] == "InvalidPolicy":
            assert ready["message"], "an unusable policy says why"
    assert not operator_process.dead()


def test_generated_jobs_are_refused_naming_the_field_or_handled(
    canary: Cluster, operator_process: Operator
) -> None:
    c = canary
    accepted: list[str] = []

    @EXAMPLES
    @given(spec=JOB_SPEC)
    def generated(spec: dict[str, Any]) -> None:
        name = f"gen-{next(COUNTER)}"
        body = trainingjob(name, 1, 1)
        body["spec"] = {**body["spec"], **spec}
        if submit(c, "trainingjobs", body):
            accepted.append(name)

    generated()
    assert not operator_process.dead(), "the operator died"
    canary_acts(c, "after-jobs")
    for name in accepted:
        wait_for(
            functools.partial(job_state, c, name),
            f"job {name} handled (a state in its status)",
        )
    assert not operator_process.dead()
