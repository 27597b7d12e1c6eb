"""The ``breaker.dev/`` annotation an action leaves on a shared object it changed. Pure.

Quotas and nodes can be held by several breakers at once; the annotation says which, and
what the first one found, so only the last holder undoes anything and a crash between the
change and the Breaker's status write loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def read(obj: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """The mark under ``key``, or None when absent or not one of ours (no holders list)."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    try:
        mark = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(mark, dict) or not isinstance(mark.get("holders"), list):
        return None
    return mark


def write(mark: Mapping[str, Any]) -> str:
    """The annotation's value: compact and stable, so an unchanged mark patches nothing."""
    return json.dumps(mark, sort_keys=True, separators=(",", ":"))
