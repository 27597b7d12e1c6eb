"""status.conditions the Kubernetes way: keyed by type, transition times kept. Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Cond:
    """A condition to set; the time is filled in only if its status changes."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""


def merge(
    existing: Iterable[dict[str, Any]] | None,
    wanted: Iterable[Cond],
    now: dt.datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The new conditions list: ``wanted`` in order, keeping each transition time that holds."""
    before = {c["type"]: c for c in existing or []}
    merged = []
    for cond in wanted:
        old = before.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        item: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": (
                now.strftime("%Y-%m-%dT%H:%M:%SZ") if changed else old["lastTransitionTime"]  # type: ignore[index]
            ),
        }
        if generation is not None:
            item["observedGeneration"] = generation
        merged.append(item)
    return merged


def find(conditions: Iterable[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: Iterable[dict[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == "True"


def put(
    existing: Iterable[dict[str, Any]] | None,
    cond: Cond,
    now: dt.datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """``existing`` with ``cond`` set (added last, or in its place), the others untouched."""
    others = list(existing or [])
    (item,) = merge(others, [cond], now, generation)
    placed = [item if c.get("type") == cond.type else c for c in others]
    return placed if find(others, cond.type) else [*others, item]


def drop(existing: Iterable[dict[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    return [c for c in existing or [] if c.get("type") != type_]


def kept(found: dict[str, Any]) -> Cond:
    """A condition read back from status, to be written again as it is."""
    return Cond(found["type"], found["status"], found.get("reason", ""), found.get("message", ""))
