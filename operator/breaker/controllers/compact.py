"""Copies of API objects that share what thousands of them repeat.

Every object parsed from the API server has strings of its own for its keys and for the
values many objects repeat (condition types and reasons, kinds, label keys, policy
names). Held by the thousand in the indexes, those copies are about half of an index's
memory. A copy made here interns the keys and the short strings, so each exists once.
Interned strings are freed when the last object using them goes (CPython before 3.12 and
from 3.12.6; the image's Python is 3.12.8), so churn of unique values does not leak.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

SHORT = 64  # longer strings (messages with names in them) are rarely the same twice


def shared(value: Any) -> Any:
    """A deep copy of plain JSON data (mappings, lists, scalars), its keys and short strings
    interned."""
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): shared(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shared(v) for v in value]
    if isinstance(value, str) and len(value) <= SHORT:
        return sys.intern(value)
    return value


def labels(value: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of a label map, keys and values interned."""
    return {sys.intern(str(k)): sys.intern(str(v)) for k, v in (value or {}).items()}
