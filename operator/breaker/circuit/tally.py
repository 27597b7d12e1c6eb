"""A policy's counts of the breakers it made, as its status shows them, sharded or not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NOTE_LIMIT = 1024  # the schema's maxLength of status.incomplete


def policy_status_patch(
    tally: Mapping[str, int],
    current: Mapping[str, Any],
    shard: str | None,
    incomplete: str | None = None,
) -> dict[str, Any] | None:
    """The status patch that brings a policy's counts and ``incomplete`` (what its last
    evaluation's partial answers were, None when whole) up to date (None: they are).

    Unsharded, the counts are the tally. A shard writes its tally and its note under
    ``shards`` (a merge patch leaves the other shards' entries alone), and the totals and
    the top-level note as every shard's, as far as it has seen them; a shard that wrote on
    a stale view is corrected by the next shard to look, since each write wakes every
    shard. Were the note one for all, two shards guarding one policy, one with partial
    answers and one without, would each undo the other's on every evaluation."""
    if shard is None:
        patch: dict[str, Any] | None = (
            None if all(current.get(k) == v for k, v in tally.items()) else dict(tally)
        )
        if current.get("incomplete") != incomplete:
            patch = {**(patch or {}), "incomplete": incomplete}
        return patch
    shards = _shards(current)
    mine = {**tally, **({"incomplete": incomplete} if incomplete else {})}
    before = shards.get(shard)
    shards[shard] = mine
    totals = {k: sum(int(counted.get(k) or 0) for counted in shards.values()) for k in tally}
    notes = _notes(shards)
    if (
        before == mine
        and all(current.get(k) == v for k, v in totals.items())
        and current.get("incomplete") == notes
    ):
        return None
    return {**totals, "shards": {shard: {**tally, "incomplete": incomplete}}, "incomplete": notes}


def _shards(current: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    found = current.get("shards")
    return {
        name: dict(counted)
        for name, counted in (found.items() if isinstance(found, Mapping) else ())
        if isinstance(counted, Mapping)
    }


def _notes(shards: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Every shard's note, by shard name (None: every answer was whole)."""
    said = [
        f"{name}: {s['incomplete']}" for name, s in sorted(shards.items()) if s.get("incomplete")
    ]
    if not said:
        return None
    joined = "; ".join(said)
    return joined if len(joined) <= NOTE_LIMIT else joined[: NOTE_LIMIT - 3] + "..."
