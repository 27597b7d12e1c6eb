"""GPU counts as the API server writes them: one parser for pods, nodes and quotas.

An extended resource such as ``nvidia.com/gpu`` is a whole number, but it travels as a
Kubernetes quantity: the API server canonicalises 1000 to ``"1k"`` and a hand-made object may
say ``8`` or ``"8"``. Anything that is not a whole, non-negative count (a fraction, ``"500m"``,
garbage) is ``None``; callers decide what that means for them.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from breaker.constants import GPU_RESOURCE

_QUANTITY = re.compile(
    r"^\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>[a-zA-Z]*)|[eE](?P<exponent>[+-]?[0-9]+))$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def count(value: Any) -> int | None:
    """A whole count from a quantity (``8``, ``"8"``, ``"1k"``, ``"2e3"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if match is None:
        return None
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["number"])
        if match["exponent"] is not None:
            number = number.scaleb(int(match["exponent"]))
        elif suffix in _BINARY:
            number *= _BINARY[suffix]
        elif suffix in _DECIMAL:
            number *= _DECIMAL[suffix]
        else:
            return None  # "m" (milli) and unknown suffixes: never a whole GPU count
    except InvalidOperation:
        return None
    return int(number) if number == number.to_integral_value() else None


def gpus(value: Any) -> int:
    """A GPU count where a missing or unreadable value counts as none."""
    return count(value) or 0


def pod_gpus(spec: dict[str, Any]) -> int:
    """GPUs a pod holds: its containers' requests, or its largest init container's."""
    return max(
        _gpus_of(spec.get("containers", [])),
        *(_gpus_of([c]) for c in spec.get("initContainers") or []),
        0,
    )


def _gpus_of(containers: list[dict[str, Any]]) -> int:
    total = 0
    for container in containers:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE) or (
            resources.get("requests") or {}
        ).get(GPU_RESOURCE)
        total += gpus(amount)
    return total
