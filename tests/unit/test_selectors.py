"""Label selectors with Kubernetes semantics."""

from __future__ import annotations

import pytest

from breaker.selectors import matches

LABELS = {"app": "train", "team": "a"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {"app": "train"}}, True),
        ({"matchLabels": {"app": "serve"}}, False),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, True),
        (
            {
                "matchLabels": {"app": "train"},
                "matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}],
            },
            False,
        ),
    ],
)
def test_selector_semantics(selector: dict[str, object] | None, expected: bool) -> None:
    assert matches(selector, LABELS) is expected
