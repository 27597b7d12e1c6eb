"""What the policy schema cannot say, checked for the Ready condition."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from breaker.api.common import parse_duration
from breaker.api.policy import BreakerPolicySpec
from breaker.detect.policy_check import problems, unbalanced


def spec(*signals: dict[str, object]) -> BreakerPolicySpec:
    return BreakerPolicySpec.model_validate({"signals": list(signals)})


def test_a_valid_policy_has_no_problems() -> None:
    assert (
        problems(
            spec({"name": "m", "preset": "gpu-mining-profile", "params": {"dramActiveMin": "0.7"}})
        )
        == []
    )


def test_an_unknown_parameter_is_named_with_the_ones_that_exist() -> None:
    (problem,) = problems(spec({"name": "m", "preset": "outbound-ssh", "params": {"port": "22"}}))
    assert problem == (
        "spec.signals[0] (m).params.port: preset outbound-ssh has no such parameter; "
        "it takes persistence, ports, source, window"
    )


def test_a_source_that_is_neither_is_named_with_both() -> None:
    (problem,) = problems(
        spec({"name": "m", "preset": "scan-fanout", "params": {"source": "calico"}})
    )
    assert problem == "spec.signals[0] (m).params.source: 'calico' is not one of hubble, node-agent"


def test_a_parameter_of_the_wrong_kind_is_named() -> None:
    (problem,) = problems(
        spec({"name": "m", "preset": "outbound-ssh", "params": {"window": "ten minutes"}})
    )
    assert problem.startswith("spec.signals[0] (m).params.window: 'ten minutes' is not a duration")


def test_an_unbalanced_query_is_named() -> None:
    (problem,) = problems(spec({"name": "q", "query": 'sum by (pod) (rate(x{a="b"}[5m])'}))
    assert problem == "spec.signals[0] (q).query: unclosed '('"
    assert unbalanced('x{a="}"}') is None
    assert unbalanced("x]") == "unmatched ']'"


def test_defaults_match_the_documented_ones() -> None:
    policy = spec({"name": "m", "preset": "gpu-mining-profile"})
    assert policy.mode == "DryRun"
    assert [a.type for a in policy.actions] == [
        "captureEvidence",
        "revokeEgress",
        "pause",
        "reassignGPUs",
    ]
    assert policy.recovery.max_trips == 3


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1.5h", 5400)]
)
def test_durations_read_like_go(text: str, seconds: float) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


def test_a_malformed_duration_says_what_it_wants() -> None:
    with pytest.raises(ValueError, match="'5 minutes' is not a duration such as 30s, 5m or 1h30m"):
        parse_duration("5 minutes")


def test_a_duration_past_ten_years_is_refused_naming_the_field() -> None:
    # It matches the pattern; it once overflowed the evaluation loop, and every breaker
    # stalled behind the one policy.
    with pytest.raises(ValidationError, match=r"signals\.0\.for[\s\S]*longer than 87600h"):
        spec({"name": "m", "preset": "outbound-ssh", "for": "99999999999h"})
    assert parse_duration("87600h").days == 3650
