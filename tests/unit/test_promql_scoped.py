"""Narrowing a signal's query to one workload's pods (the per-workload baseline's queries)."""

from __future__ import annotations

import re

import pytest

from breaker.detect import engine
from breaker.detect.policy_file import load
from breaker.detect.promql import pods_matcher, scoped

DCGM = ("namespace", "pod")


def test_every_selector_form_gets_the_matchers() -> None:
    query = (
        'sum by (namespace, pod) (rate(hubble_drop_total{reason="POLICY_DENIED"}[5m])) * 60'
        " and on (namespace, pod) DCGM_FI_DEV_GPU_UTIL offset 5m"
        ' or {__name__="up"} unless foo:bar [10m:1m]'
    )
    assert scoped(query, DCGM, "team-a", ["rl-0"]) == (
        "sum by (namespace, pod) (rate(hubble_drop_total"
        '{namespace="team-a",pod="rl-0",reason="POLICY_DENIED"}[5m])) * 60'
        ' and on (namespace, pod) DCGM_FI_DEV_GPU_UTIL{namespace="team-a",pod="rl-0"} offset 5m'
        ' or {namespace="team-a",pod="rl-0",__name__="up"}'
        ' unless foo:bar{namespace="team-a",pod="rl-0"} [10m:1m]'
    )


def test_strings_and_braces_inside_them_are_left_alone() -> None:
    query = 'falco_events_total{rule=~"a}b|c\\"d"} > bool 1e3'
    assert scoped(query, ("ns", "p"), "t", ["x"]) == (
        'falco_events_total{ns="t",p="x",rule=~"a}b|c\\"d"} > bool 1e3'
    )


def test_several_pods_match_by_an_escaped_alternation() -> None:
    assert pods_matcher("pod", ["b.1", "a-0"]) == 'pod=~"a-0|b\\\\.1"'


@pytest.mark.parametrize("signal", engine.compile_policy(load(None)).signals, ids=lambda s: s.name)
def test_each_default_signal_is_narrowed_at_every_selector(signal: engine.SignalSpec) -> None:
    narrowed = scoped(signal.query, signal.labels, "team-a", ["rl-0"])
    namespaced = f'{signal.labels[0]}="team-a",{signal.labels[1]}="rl-0"'
    selectors = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*\{", signal.query)
    bare = narrowed.count(namespaced) - len(selectors)
    assert narrowed.count(namespaced) >= max(1, len(selectors))
    assert bare >= 0
    # Nothing else changed: take the matchers out and the query is as it was.
    assert narrowed.replace(namespaced + ",", "").replace("{" + namespaced + "}", "") == (
        signal.query
    )


def test_breaker_queries_prints_each_signal_narrowed_to_the_pods_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from breaker.cli import main

    assert main(["queries", "--pod", "team-a/rl-0", "--pod", "team-a/rl-1"]) == 0
    out = capsys.readouterr().out
    assert "# pool-egress (pod; fires when > 0, for 0s)" in out
    assert 'source_namespace="team-a",source_pod=~"rl-0|rl-1"' in out
    assert main(["queries", "--pod", "team-a/rl-0", "--pod", "team-b/rl-1"]) == 2
    assert "every pod in one namespace" in capsys.readouterr().err
