"""A policy's counts of the breakers it made, as its status shows them, sharded or not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def policy_status_patch(
    tally: Mapping[str, int],
    current: Mapping[str, Any],
    shard: str | None,
    incomplete: str | None = None,
) -> dict[str, Any] | None:
    """The status patch that brings a policy's counts and ``incomplete`` (what its last
    evaluation's partial answers were, None when whole) up to date (None: they are)."""
    patch = _counts_patch(tally, current, shard)
    if current.get("incomplete") != incomplete:
        patch = {**(patch or {}), "incomplete": incomplete}
    return patch


def _counts_patch(
    tally: Mapping[str, int], current: Mapping[str, Any], shard: str | None
) -> dict[str, Any] | None:
    """The patch of the counts alone.

    Unsharded, the counts are the tally. A shard writes its tally under ``shards`` (a
    merge patch leaves the other shards' entries alone) and the totals as the sum of every
    shard's, as far as it has seen them; a shard that wrote on a stale view is corrected
    by the next shard to look, since each write wakes every shard."""
    if shard is None:
        return None if all(current.get(k) == v for k, v in tally.items()) else dict(tally)
    found = current.get("shards")
    shards = {
        name: dict(counted)
        for name, counted in (found.items() if isinstance(found, Mapping) else ())
        if isinstance(counted, Mapping)
    }
    mine = shards.get(shard)
    shards[shard] = dict(tally)
    totals = {k: sum(int(counted.get(k) or 0) for counted in shards.values()) for k in tally}
    if mine == dict(tally) and all(current.get(k) == v for k, v in totals.items()):
        return None
    return {**totals, "shards": {shard: dict(tally)}}
