"""Reading kopf's indexes while they change underneath."""

from __future__ import annotations

from typing import Any

from breaker.controllers.inventory import items


def test_items_survives_the_index_changing_between_items() -> None:
    # A caller awaits between items (writing a status); kopf indexes a new object meanwhile.
    index: dict[Any, list[str]] = {"a": ["first"], "b": ["second"]}
    seen = []
    for key, value in items(index):  # type: ignore[arg-type]
        seen.append((key, value))
        index["c"] = ["added meanwhile"]
        index.pop("b", None)
    assert seen == [("a", "first")]
