"""`kubectl breaker`'s formatting: the status table, the explain timeline, name resolution."""

from __future__ import annotations

import datetime as dt
from typing import Any

from breaker.plugin import age, explain, guarding, status_table, timeline

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def breaker(name: str, state: str = "Open", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "policyRef": {"kind": "ClusterBreakerPolicy", "name": "default"},
            "targetRef": {
                "apiVersion": "breaker.dev/v1alpha1",
                "kind": "TrainingJob",
                "name": "rl",
            },
        },
        "status": {"state": state, "trips": 1, **status},
    }


def tripped() -> dict[str, Any]:
    return breaker(
        "rl-default",
        lastTrip="2026-11-23T11:58:00Z",
        reason="mining-pool-egress fired",
        signals="Available",
        timeToContainSeconds=0.42,
        contained=True,
        history=[
            {"time": "2026-11-23T11:58:00Z", "from": "Closed", "to": "Open", "reason": "pool"}
        ],
        evidence=[
            {
                "time": "2026-11-23T11:58:00Z",
                "rule": "anyCritical",
                "signals": [
                    {
                        "name": "pool",
                        "query": "sum by (pod) (rate(flows[1m]))",
                        "value": 3.14159,
                        "pod": "rl-0",
                        "labels": {"destination_port": "3333"},
                    }
                ],
                "pods": [{"name": "rl-0", "node": "gpu-node-1"}],
            }
        ],
        actions=[
            {
                "type": "revokeEgress",
                "appliedAt": "2026-11-23T11:58:00.300000Z",
                "changed": {
                    "quarantinePolicy": "rl-default-quarantine",
                    "pods": ["rl-0"],
                    "narrowed": {},
                },
            },
            {
                "type": "pause",
                "appliedAt": "2026-11-23T11:58:00.200000Z",
                "changed": {"kind": "TrainingJob", "name": "rl", "field": "spec.suspend"},
            },
        ],
    )


def test_ages_read_like_kubectls() -> None:
    assert age("2026-11-23T11:59:15Z", NOW) == "45s"
    assert age("2026-11-23T11:48:00Z", NOW) == "12m"
    assert age("2026-11-23T07:00:00Z", NOW) == "5h"
    assert age("2026-11-20T12:00:00Z", NOW) == "3d"
    assert age(None, NOW) == "-"


def test_status_table_aligns_and_colours_only_when_asked() -> None:
    rows = [tripped(), breaker("quiet", "Closed", trips=0, signals="Unknown")]
    plain = status_table(rows, NOW, all_namespaces=True, colour=False)
    lines = plain.splitlines()
    assert lines[0].split() == [
        "NAMESPACE", "NAME", "WORKLOAD", "POLICY", "STATE", "SIGNALS", "TRIPS", "LAST", "TRIP",
        "REASON",
    ]  # fmt: skip
    assert "\033[" not in plain
    assert lines[1].split()[:7] == [
        "team-a", "quiet", "TrainingJob/rl", "cluster/default", "Closed", "Unknown", "0",
    ]  # fmt: skip
    assert "2m" in lines[2]
    assert "mining-pool-egress fired" in lines[2]
    coloured = status_table(rows, NOW, all_namespaces=False, colour=True)
    assert "\033[31mOpen" in coloured
    assert "\033[33mUnknown" in coloured
    assert "NAMESPACE" not in coloured


def test_dry_run_breakers_say_so() -> None:
    table = status_table([breaker("d", dryRun=True)], NOW, False, False)
    assert "Open (dry run)" in table


def test_the_timeline_puts_a_trip_before_its_evidence_and_actions_in_time_order() -> None:
    moments = timeline(tripped())
    assert [m.what for m in moments] == [
        "Closed → Open: pool",
        "evidence (rule anyCritical)",
        "pause applied",
        "revokeEgress applied",
    ]
    evidence = moments[1].details
    assert evidence[0] == "pool = 3.142 on pod rl-0"
    assert "rate(flows[1m])" in evidence[1]
    assert "destination_port=3333" in evidence[2]
    assert evidence[3] == "pods: rl-0@gpu-node-1"


def test_warning_events_join_the_timeline() -> None:
    event = {
        "type": "Warning",
        "reason": "ContainmentRestored",
        "message": "rl was resumed; paused again",
        "lastTimestamp": "2026-11-23T11:59:00Z",
    }
    moments = timeline(tripped(), [event, {**event, "type": "Normal"}])
    assert moments[-1].what == "Warning ContainmentRestored: rl was resumed; paused again"
    assert sum("ContainmentRestored" in m.what for m in moments) == 1


def test_explain_tells_the_story_and_how_to_undo_it() -> None:
    text = explain(tripped())
    assert "guards    TrainingJob rl" in text
    assert "policy    ClusterBreakerPolicy default" in text
    assert "contained yes in 0.42 s (done: revokeEgress, pause)" in text
    assert "TrainingJob rl suspended" in text
    assert "2026-11-23 11:58:00Z  Closed → Open: pool" in text
    assert text.rstrip().endswith("kubectl breaker reset rl-default -n team-a")
    fresh = explain(breaker("new", "Closed", trips=0))
    assert "nothing has happened yet" in fresh
    assert "reset" not in fresh


def test_names_resolve_to_the_breaker_or_else_the_workloads_breakers() -> None:
    a, b = breaker("rl-default"), breaker("rl-strict")
    assert guarding([a, b], "rl-strict", None) == [b]
    assert guarding([a, b], "rl", None) == [a, b]
    assert guarding([a, b], "rl", "trainingjob") == [a, b]
    assert guarding([a, b], "rl", "Deployment") == []
    assert guarding([a, b], "other", None) == []


def test_explain_says_what_still_reaches_the_held_pods_and_what_it_followed() -> None:
    held = tripped()
    held["status"]["exposure"] = {
        "services": ["rl-np (NodePort)"],
        "sessions": [
            {"pod": "rl-0", "node": "n1", "pid": 42, "command": "sh", "started": "t1"},
            {
                "pod": "rl-0",
                "node": "n1",
                "pid": 43,
                "command": "sh",
                "started": "t0",
                "ended": True,
            },
        ],
    }
    held["status"]["followed"] = [{"uid": "u-old", "until": "2026-11-23T11:59:00Z"}]
    text = explain(held)
    assert "exposed   by Service rl-np (NodePort)" in text
    assert "exec      OPEN: pod rl-0 (node n1, pid 42, since t1): sh" in text
    assert "exec      ended: pod rl-0 (node n1, pid 43" in text
    assert "it had uid u-old until 2026-11-23 11:59:00Z" in text
